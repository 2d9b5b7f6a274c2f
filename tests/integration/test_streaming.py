"""Streamed completions: usage chunks, latency of chunks, and streams that end early."""

from __future__ import annotations

import json
import time

import httpx2
import openai

from harness import Gateway, mock_chat_prompt_tokens, unique_text, word_count

REQUEST_ID_HEADER = "x-watchllm-request-id"


def stream_chat(gateway: Gateway, prompt: str, headers: dict[str, str] | None = None, **options):
    """Stream a chat completion and return (request id, chunks, joined content)."""
    messages = [{"role": "user", "content": prompt}]
    with gateway.client().chat.completions.with_streaming_response.create(
        model="gpt-4o-mini", messages=messages, stream=True, extra_headers=headers or {}, **options
    ) as response:
        request_id = response.headers.get(REQUEST_ID_HEADER)
        chunks = list(response.parse())
    content = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    gateway.track(prompt, content)
    return request_id, chunks, content


def test_stream_without_usage_option(gateway: Gateway) -> None:
    prompt = unique_text("Stream a reply without usage")
    messages = [{"role": "user", "content": prompt}]

    request_id, chunks, content = stream_chat(gateway, prompt)
    upstream = json.loads(gateway.mock.last_request()["body"])
    event = gateway.wait_for_event(request_id)

    assert content.startswith("Mock reply to: Stream a reply without usage")
    assert all(chunk.usage is None for chunk in chunks)
    assert all(chunk.choices for chunk in chunks), "a chunk without choices reached the client"
    assert upstream["stream_options"] == {"include_usage": True}
    assert event["stream"] is True
    assert event["tokens_estimated"] is False
    assert event["prompt_tokens"] == mock_chat_prompt_tokens(messages)
    assert event["completion_tokens"] == word_count(content)
    assert event["error_type"] is None


def test_stream_with_usage_option(gateway: Gateway) -> None:
    prompt = unique_text("Stream a reply with usage")
    messages = [{"role": "user", "content": prompt}]

    request_id, chunks, content = stream_chat(gateway, prompt, stream_options={"include_usage": True})
    usage_chunks = [chunk for chunk in chunks if chunk.usage is not None]
    event = gateway.wait_for_event(request_id)

    assert len(usage_chunks) == 1
    assert usage_chunks[0] is chunks[-1]
    assert usage_chunks[0].choices == []
    assert usage_chunks[0].usage.prompt_tokens == mock_chat_prompt_tokens(messages)
    assert usage_chunks[0].usage.completion_tokens == word_count(content)
    assert event["prompt_tokens"] == usage_chunks[0].usage.prompt_tokens
    assert event["completion_tokens"] == usage_chunks[0].usage.completion_tokens
    assert event["tokens_estimated"] is False


def test_stream_completion_usage(gateway: Gateway) -> None:
    prompt = unique_text("Legacy stream")

    with gateway.client().completions.with_streaming_response.create(
        model="gpt-4o-mini", prompt=prompt, stream=True
    ) as response:
        request_id = response.headers.get(REQUEST_ID_HEADER)
        chunks = list(response.parse())
    text = "".join(chunk.choices[0].text for chunk in chunks if chunk.choices)
    gateway.track(prompt, text)
    event = gateway.wait_for_event(request_id)

    assert text.startswith("Mock completion of: Legacy stream")
    assert all(chunk.usage is None for chunk in chunks)
    assert event["endpoint"] == "completions"
    assert event["prompt_tokens"] == word_count(prompt)
    assert event["completion_tokens"] == word_count(text)
    assert event["tokens_estimated"] is False


def test_stream_not_buffered(gateway: Gateway) -> None:
    prompt = unique_text("Stream slowly")
    arrivals: list[float] = []
    pieces: list[str] = []

    with gateway.client().chat.completions.with_streaming_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": prompt}],
        stream=True,
        extra_headers={"x-mock-chunks": "5", "x-mock-chunk-delay-ms": "200"},
    ) as response:
        for chunk in response.parse():
            if chunk.choices and chunk.choices[0].delta.content:
                arrivals.append(time.monotonic())
                pieces.append(chunk.choices[0].delta.content)
    gateway.track(prompt, "".join(pieces))

    # The mock sends the five content chunks 200 ms apart, so 800 ms pass between the first
    # and the last. A gateway that buffered the stream would deliver them together.
    assert len(arrivals) == 5
    assert arrivals[-1] - arrivals[0] >= 0.6, f"content chunks arrived within {arrivals[-1] - arrivals[0]:.3f} s"


def test_stream_keepalive_comment(gateway: Gateway) -> None:
    prompt = unique_text("Stream after a keep-alive")
    messages = [{"role": "user", "content": prompt}]

    request_id, chunks, content = stream_chat(gateway, prompt, headers={"x-mock-keepalive": "1"})
    event = gateway.wait_for_event(request_id)

    assert content.startswith("Mock reply to: Stream after a keep-alive")
    assert all(chunk.usage is None for chunk in chunks)
    assert event["prompt_tokens"] == mock_chat_prompt_tokens(messages)
    assert event["completion_tokens"] == word_count(content)


def test_stream_missing_usage(gateway: Gateway) -> None:
    prompt = unique_text("Stream from a provider without usage")

    request_id, _, content = stream_chat(gateway, prompt, headers={"x-mock-no-usage": "1"})
    event = gateway.wait_for_event(request_id)

    assert content.startswith("Mock reply to:")
    assert event["tokens_estimated"] is True
    assert event["prompt_tokens"] > 0
    assert event["completion_tokens"] > 0
    assert event["total_tokens"] == event["prompt_tokens"] + event["completion_tokens"]
    assert event["cost_usd"] > 0


def test_stream_client_disconnect(gateway: Gateway) -> None:
    prompt = unique_text("Stream that the client abandons")
    received = ""

    with gateway.client().chat.completions.with_streaming_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": prompt}],
        stream=True,
        extra_headers={"x-mock-chunks": "20", "x-mock-chunk-delay-ms": "100"},
    ) as response:
        request_id = response.headers.get(REQUEST_ID_HEADER)
        for chunk in response.parse():
            if chunk.choices and chunk.choices[0].delta.content:
                received = chunk.choices[0].delta.content
                break
    disconnected_at = time.monotonic()
    gateway.track(prompt)
    event = gateway.wait_for_event(request_id, timeout=15.0)

    assert received, "no content chunk arrived before the disconnect"
    assert event["stream"] is True
    assert event["error_type"] == "client_disconnected"
    # The full stream lasts about 2.2 s, and the event must not wait for the provider to finish.
    assert event["latency_ms"] < 2000, event
    assert time.monotonic() - disconnected_at < 15.0


def test_stream_upstream_cut(gateway: Gateway) -> None:
    prompt = unique_text("Stream that the provider cuts")
    pieces: list[str] = []
    request_id = None
    stream_error: Exception | None = None

    try:
        with gateway.client().chat.completions.with_streaming_response.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": prompt}],
            stream=True,
            extra_headers={"x-mock-chunks": "5", "x-mock-cut-after": "2"},
        ) as response:
            request_id = response.headers.get(REQUEST_ID_HEADER)
            for chunk in response.parse():
                if chunk.choices and chunk.choices[0].delta.content:
                    pieces.append(chunk.choices[0].delta.content)
    except (httpx2.HTTPError, openai.APIError) as error:
        stream_error = error
    gateway.track(prompt, "".join(pieces))
    assert request_id, "the response headers carried no request id"
    event = gateway.wait_for_event(request_id)

    assert len(pieces) == 2, f"expected the 2 chunks sent before the cut, got {pieces} (error: {stream_error!r})"
    assert event["stream"] is True
    assert event["error_type"], f"a cut stream was recorded as a success: {event}"


def test_stream_error_event(gateway: Gateway) -> None:
    prompt = unique_text("Stream that starts with an error")

    with gateway.client().chat.completions.with_streaming_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": prompt}],
        stream=True,
        extra_headers={"x-mock-error-in-200": "1"},
    ) as response:
        request_id = response.headers.get(REQUEST_ID_HEADER)
        body = response.http_response.read()
    gateway.track(prompt)
    event = gateway.wait_for_event(request_id)

    assert b"mock_error_in_200" in body
    assert event["status"] == 200
    assert event["error_type"] == "upstream_error_event"


def test_stream_malformed_event(gateway: Gateway) -> None:
    # The SDK stops at an event that is not JSON, so this test reads the raw stream.
    prompt = unique_text("Stream with a broken event")
    messages = [{"role": "user", "content": prompt}]
    body = json.dumps({"model": "gpt-4o-mini", "messages": messages, "stream": True}).encode()

    response = gateway.post("/chat/completions", body, headers={"x-mock-malformed": "1"})
    events = [block for block in response.body.decode().split("\n\n") if block.strip()]
    chunks = [json.loads(block[len("data: "):]) for block in events if block.startswith("data: {\"")]
    content = "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks if chunk["choices"])
    gateway.track(prompt, content)
    event = gateway.wait_for_event(response.headers[REQUEST_ID_HEADER])

    assert response.status == 200
    assert "data: {not json" in events
    assert events[-1] == "data: [DONE]"
    assert all("usage" not in chunk or chunk["usage"] is None for chunk in chunks)
    assert event["tokens_estimated"] is False
    assert event["prompt_tokens"] == mock_chat_prompt_tokens(messages)
    assert event["completion_tokens"] == word_count(content)
