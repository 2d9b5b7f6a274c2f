"""The gateway's stderr never contains keys, prompts or completions, even at debug level.

The `gateway_factory` fixture checks every test's stderr for the texts that the test registered
with `Gateway.track`. These tests add debug logging and requests that fail in several ways.
"""

from __future__ import annotations

import json

import openai
import pytest

from harness import Gateway, find_leaks, unique_text, wait_until


def send_mixed_requests(gateway: Gateway) -> None:
    """Send a plain, a streamed, a rejected and an upstream-failed request with tracked texts."""
    client = gateway.client()

    prompt = unique_text("Plain request for the log check")
    completion = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}])
    gateway.track(prompt, completion.choices[0].message.content)

    prompt = unique_text("Streamed request for the log check")
    chunks = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}], stream=True
    )
    gateway.track(prompt, "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices))

    prompt = unique_text("Rejected request for the log check")
    gateway.track(prompt)
    response = gateway.post("/chat/completions", json.dumps({"model": "gpt-4o-mini", "messages": prompt}).encode())
    assert response.status == 400

    prompt = unique_text("Failed request for the log check")
    gateway.track(prompt)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": prompt}],
            extra_headers={"x-mock-status": "500"},
        )

    wrong_key = "wllm_" + "f" * 64
    gateway.track(wrong_key)
    with pytest.raises(openai.AuthenticationError):
        gateway.client(api_key=wrong_key).models.list()


def test_info_logs_omit_secrets(gateway: Gateway) -> None:
    send_mixed_requests(gateway)
    gateway.wait_for_events(4)
    gateway.stop()

    logged = gateway.stderr_text()
    leaks = find_leaks(logged, gateway.secrets)

    assert "request finished" in logged, "the gateway logged no request lines, so the check proves nothing"
    assert not leaks, "\n".join(leaks)


def test_debug_logs_omit_secrets(gateway_factory) -> None:
    gateway = gateway_factory(environment={"WATCHLLM_LOG": "debug"})

    send_mixed_requests(gateway)
    gateway.wait_for_events(4)
    gateway.stop()

    logged = gateway.stderr_text()
    # This test reports leaks itself, so the fixture's check after the test does not repeat them.
    tracked = list(gateway.secrets)
    gateway.secrets.clear()

    leaks = find_leaks(logged, tracked)

    assert "DEBUG" in logged, "debug logging is not on, so the check proves less than it claims"
    assert not leaks, "\n".join(leaks)


def request_line(log: str, request_id: str) -> str | None:
    """Return the `request finished` line of `request_id`, or None."""
    return next((line for line in log.splitlines() if "request finished" in line and request_id in line), None)


def test_request_line_written_soon(gateway: Gateway) -> None:
    raw = gateway.client().chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "log me"}]
    )
    request_id = raw.headers["x-watchllm-request-id"]
    # The line waits in the log buffer for at most 20 ms, so a second is ample.
    wait_until(lambda: request_line(gateway.stderr_text(), request_id) is not None, 1.0, "no request line within 1 s")
    assert "status=200" in request_line(gateway.stderr_text(), request_id)


def test_buffered_lines_written_at_exit(gateway: Gateway) -> None:
    ids = []
    for _ in range(20):
        raw = gateway.client().chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "log me"}]
        )
        ids.append(raw.headers["x-watchllm-request-id"])
    assert gateway.stop() == 0
    log = gateway.stderr_text()
    missing = [request_id for request_id in ids if request_line(log, request_id) is None]
    assert missing == []
    # Logged just before the process exits, so only the flush at exit writes it.
    assert "accounting stopped" in log
