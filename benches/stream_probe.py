"""Measure time to first token and the gaps between stream chunks of a streamed chat completion.

benches/load.sh runs it once against the mock provider directly and once through WatchLLM. Each
request makes the mock send CHUNKS content chunks spaced by DELAY_MS (the `x-mock-chunks` and
`x-mock-chunk-delay-ms` headers), so the gaps should equal DELAY_MS and whatever a proxy adds
shows up as the difference from the direct run.

Usage: stream_probe.py HOST:PORT REQUESTS CHUNKS DELAY_MS [API_KEY]

Prints one `RESULT` line with the median and p90 time to first token (from sending the request
to the first data event that carries content), the median, p99 and maximum gap between data
events, and the number of requests that failed. Times are in milliseconds. It uses only the
standard library and reads the raw socket, so no client buffering delays a chunk.
"""

import json
import socket
import statistics
import sys
import time

TIMEOUT_SECONDS = 10


def percentile(values, fraction):
    """Return the nearest-rank percentile of a non-empty list."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(fraction * len(ordered)) - 1))
    return ordered[rank]


def build_request(host, chunks, delay_ms, api_key):
    body = json.dumps(
        {
            "model": "gpt-4o-mini",
            "stream": True,
            "messages": [{"role": "user", "content": "Count slowly from one to twenty in words."}],
        }
    ).encode()
    headers = [
        "POST /v1/chat/completions HTTP/1.1",
        f"Host: {host}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        f"x-mock-chunks: {chunks}",
        f"x-mock-chunk-delay-ms: {delay_ms}",
        "Connection: close",
    ]
    if api_key:
        headers.append(f"Authorization: Bearer {api_key}")
    return ("\r\n".join(headers) + "\r\n\r\n").encode() + body


def stream_once(host, port, request):
    """Send one request and return (status line, [(seconds since send, data event bytes)])."""
    events = []
    pending = b""
    head = None
    with socket.create_connection((host, port), timeout=TIMEOUT_SECONDS) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        started = time.perf_counter()
        conn.sendall(request)
        while True:
            piece = conn.recv(65536)
            arrived = time.perf_counter() - started
            if not piece:
                break
            pending += piece
            if head is None:
                if b"\r\n\r\n" not in pending:
                    continue
                head, pending = pending.split(b"\r\n\r\n", 1)
            # Chunked framing lines never start with "data:", so scanning lines is enough here.
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if line.startswith(b"data:"):
                    events.append((arrived, line))
    status = head.split(b"\r\n", 1)[0].decode() if head else "no response"
    return status, events


def main():
    if len(sys.argv) not in (5, 6):
        sys.exit("usage: stream_probe.py HOST:PORT REQUESTS CHUNKS DELAY_MS [API_KEY]")
    host, port = sys.argv[1].rsplit(":", 1)
    requests, chunks, delay_ms = (int(value) for value in sys.argv[2:5])
    api_key = sys.argv[5] if len(sys.argv) == 6 else ""
    request = build_request(sys.argv[1], chunks, delay_ms, api_key)

    first_token_ms, gaps_ms, failures = [], [], 0
    for _ in range(requests):
        status, events = stream_once(host, int(port), request)
        content = [at for at, line in events if b'"content":"' in line and b'"content":""' not in line]
        if " 200 " not in status + " " or len(content) < chunks or not events[-1][1].strip().endswith(b"[DONE]"):
            failures += 1
            print(f"stream_probe: request failed: {status}, {len(content)} content chunks", file=sys.stderr)
            continue
        first_token_ms.append(content[0] * 1000)
        gaps_ms.extend((later - earlier) * 1000 for earlier, later in zip(content, content[1:]))

    if not first_token_ms:
        print(f"RESULT failures={failures}")
        sys.exit(1)
    print(
        "RESULT"
        f" ttft_p50_ms={statistics.median(first_token_ms):.2f}"
        f" ttft_p90_ms={percentile(first_token_ms, 0.9):.2f}"
        f" gap_p50_ms={statistics.median(gaps_ms):.2f}"
        f" gap_p99_ms={percentile(gaps_ms, 0.99):.2f}"
        f" gap_max_ms={max(gaps_ms):.2f}"
        f" gaps={len(gaps_ms)}"
        f" failures={failures}"
    )


if __name__ == "__main__":
    main()
