"""Errors that the gateway produces itself, and provider errors that pass through it.

Gateway errors reach the SDK as typed exceptions with the OpenAI error shape
`{"error": {"message", "type", "code"}}`.
"""

from __future__ import annotations

import gzip
import json
import time

import openai
import pytest

from harness import Gateway, free_port, http_request, unique_text

REQUEST_ID_HEADER = "x-watchllm-request-id"


def chat_messages(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def test_missing_key_401(gateway: Gateway) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        gateway.client().chat.completions.create(
            model="gpt-4o-mini", messages=chat_messages("hello"), extra_headers={"Authorization": openai.Omit()}
        )

    assert caught.value.status_code == 401
    assert caught.value.code == "missing_api_key"
    assert "authorization" not in {name.lower() for name in caught.value.request.headers}


def test_invalid_key_401(gateway: Gateway) -> None:
    wrong_key = "wllm_" + "0" * 64

    with pytest.raises(openai.AuthenticationError) as caught:
        gateway.client(api_key=wrong_key).chat.completions.create(model="gpt-4o-mini", messages=chat_messages("hello"))

    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_api_key"
    assert caught.value.type == "invalid_request_error"


def test_unknown_model_404(gateway: Gateway) -> None:
    requests_before = gateway.mock.request_count()

    with pytest.raises(openai.NotFoundError) as caught:
        gateway.client().chat.completions.create(model="no-such-model", messages=chat_messages("hello"))

    assert caught.value.status_code == 404
    assert caught.value.code == "model_not_found"
    assert "no-such-model" in caught.value.message
    assert gateway.mock.request_count() == requests_before


def test_unknown_url_404(gateway: Gateway) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        gateway.client().post("/no/such/route", cast_to=object, body={"model": "gpt-4o-mini"})

    assert caught.value.status_code == 404
    assert caught.value.code == "unknown_url"


def test_invalid_json_400(gateway: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        gateway.client().post(
            "/chat/completions",
            cast_to=object,
            content=b'{"model": "gpt-4o-mini", "messages": [',
            options={"headers": {"Content-Type": "application/json"}},
        )

    assert caught.value.status_code == 400
    assert caught.value.code == "invalid_json"
    # serde_json's message for a body that ends inside an array.
    assert "EOF while parsing" in caught.value.message


@pytest.mark.parametrize("missing", ["model", "messages"])
def test_missing_parameter_400(gateway: Gateway, missing: str) -> None:
    body = {"model": "gpt-4o-mini", "messages": chat_messages("hello")}
    del body[missing]

    with pytest.raises(openai.BadRequestError) as caught:
        gateway.client().post("/chat/completions", cast_to=object, body=body)

    assert caught.value.status_code == 400
    assert caught.value.code == "missing_required_parameter"
    assert missing in caught.value.message


def test_body_over_limit_413(gateway_factory) -> None:
    gateway = gateway_factory(config_overrides={"max_request_body_bytes": 65536})
    prompt = unique_text("oversized") + " " + "word " * 20000

    with pytest.raises(openai.APIStatusError) as caught:
        gateway.client().chat.completions.create(model="gpt-4o-mini", messages=chat_messages(prompt))

    assert caught.value.status_code == 413
    assert caught.value.code == "request_too_large"
    assert "65536" in caught.value.message


def test_body_at_limit_accepted(gateway_factory) -> None:
    limit = 65536
    gateway = gateway_factory(config_overrides={"max_request_body_bytes": limit})
    prompt = unique_text("exactly at the limit")
    head = '{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "%s"}], "padding": "' % prompt
    tail = '"}'
    body = (head + "p" * (limit - len(head) - len(tail)) + tail).encode()
    assert len(body) == limit

    response = gateway.post("/chat/completions", body)
    gateway.track(prompt, response.json()["choices"][0]["message"]["content"])

    assert response.status == 200, response.body


def test_gzip_over_limit_413(gateway_factory) -> None:
    gateway = gateway_factory(config_overrides={"max_request_body_bytes": 65536})
    body = json.dumps({"model": "gpt-4o-mini", "messages": chat_messages("hello"), "padding": " " * 200_000})
    compressed = gzip.compress(body.encode())
    assert len(compressed) < 65536

    response = gateway.post("/chat/completions", compressed, headers={"Content-Encoding": "gzip"})

    assert response.status == 413
    assert response.json()["error"]["code"] == "request_too_large"


def test_unsupported_encoding_415(gateway: Gateway) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        gateway.client().chat.completions.create(
            model="gpt-4o-mini", messages=chat_messages("hello"), extra_headers={"Content-Encoding": "br"}
        )

    assert caught.value.status_code == 415
    assert caught.value.code == "unsupported_content_encoding"


def test_corrupt_gzip_400(gateway: Gateway) -> None:
    # The SDK sends plain JSON, which is not a valid gzip stream.
    with pytest.raises(openai.BadRequestError) as caught:
        gateway.client().chat.completions.create(
            model="gpt-4o-mini", messages=chat_messages("hello"), extra_headers={"Content-Encoding": "gzip"}
        )

    assert caught.value.status_code == 400
    assert caught.value.code == "invalid_body_encoding"


def test_upstream_down_502(gateway_factory) -> None:
    closed_port = free_port()
    gateway = gateway_factory(
        config_overrides={"providers": {"mock": {"base_url": f"http://127.0.0.1:{closed_port}/v1"}}}
    )

    with pytest.raises(openai.InternalServerError) as caught:
        gateway.client().chat.completions.create(model="gpt-4o-mini", messages=chat_messages("hello"))
    request_id = caught.value.response.headers.get(REQUEST_ID_HEADER)
    event = gateway.wait_for_event(request_id)

    assert caught.value.status_code == 502
    assert caught.value.code == "upstream_connect_failed"
    assert event["status"] == 502
    assert event["error_type"] == "upstream_connect_failed"
    assert event["total_tokens"] == 0
    assert event["cost_usd"] == 0


def test_upstream_timeout_504(gateway_factory) -> None:
    gateway = gateway_factory(config_overrides={"providers": {"mock": {"read_timeout_ms": 500}}})
    started = time.monotonic()

    with pytest.raises(openai.InternalServerError) as caught:
        gateway.client().chat.completions.create(
            model="gpt-4o-mini", messages=chat_messages("hello"), extra_headers={"x-mock-delay-ms": "3000"}
        )
    elapsed = time.monotonic() - started
    request_id = caught.value.response.headers.get(REQUEST_ID_HEADER)
    event = gateway.wait_for_event(request_id)

    assert caught.value.status_code == 504
    assert caught.value.code == "upstream_timeout"
    assert elapsed < 2.5, f"the gateway waited {elapsed:.2f} s with a 0.5 s read timeout"
    assert event["status"] == 504
    assert event["error_type"] == "upstream_timeout"


def test_upstream_429_passthrough(gateway: Gateway) -> None:
    failure_headers = {"x-mock-status": "429", "x-mock-retry-after": "7"}
    body = json.dumps({"model": "gpt-4o-mini", "messages": chat_messages("hello")}).encode()
    direct = http_request(
        gateway.mock.url + "/chat/completions", "POST", body, {"Content-Type": "application/json", **failure_headers}
    )

    with pytest.raises(openai.RateLimitError) as caught:
        gateway.client().chat.completions.create(
            model="gpt-4o-mini", messages=chat_messages("hello"), extra_headers=failure_headers
        )
    request_id = caught.value.response.headers.get(REQUEST_ID_HEADER)
    event = gateway.wait_for_event(request_id)

    assert direct.status == 429
    assert caught.value.response.content == direct.body
    assert caught.value.status_code == 429
    assert caught.value.code == "rate_limit_exceeded"
    assert "x-mock-status" in caught.value.message
    assert caught.value.response.headers.get("retry-after") == "7"
    assert event["status"] == 429
    assert event["error_type"] == "upstream_status_429"


def test_upstream_500_passthrough(gateway: Gateway) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        gateway.client().embeddings.create(
            model="text-embedding-3-small", input="hello", extra_headers={"x-mock-status": "503"}
        )

    assert caught.value.status_code == 503
    assert caught.value.code == "service_unavailable"
    assert caught.value.type == "server_error"


def test_upstream_error_costs_nothing(gateway: Gateway) -> None:
    # The provider rejected the request and reported no usage, so nothing was consumed.
    with pytest.raises(openai.RateLimitError) as caught:
        gateway.client().chat.completions.create(
            model="gpt-4o-mini", messages=chat_messages("hello there"), extra_headers={"x-mock-status": "429"}
        )
    event = gateway.wait_for_event(caught.value.response.headers.get(REQUEST_ID_HEADER))

    summary = {name: event[name] for name in ("status", "total_tokens", "tokens_estimated", "cost_usd", "error_type")}
    assert event["total_tokens"] == 0, summary
    assert event["cost_usd"] == 0, summary
