"""Stored usage events: exact tokens from the provider, costs from the pricing file, estimates.

The mock counts one token per whitespace-separated word and adds 4 tokens per chat message, so
every expected count below is computed from the request and the reply text.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from harness import Gateway, mock_chat_prompt_tokens, unique_text, word_count

REQUEST_ID_HEADER = "x-watchllm-request-id"


def assert_common_fields(gateway: Gateway, event: dict, endpoint: str, model: str) -> None:
    assert event["project_id"] == gateway.project_id
    assert event["key_id"] == gateway.key_id
    assert event["endpoint"] == endpoint
    assert event["model"] == model
    assert event["provider"] == "mock"
    assert event["status"] == 200
    assert event["cache_status"] == "none"
    assert event["error_type"] is None
    assert event["latency_ms"] >= 0
    assert event["ttfb_ms"] is not None
    assert event["ttfb_ms"] <= event["latency_ms"]


@pytest.mark.parametrize("model", ["gpt-4o-mini", "gpt-4o"])
def test_chat_event_exact(gateway: Gateway, model: str) -> None:
    messages = [
        {"role": "system", "content": "You answer in one short sentence."},
        {"role": "user", "content": unique_text("What is the capital of France")},
    ]

    raw = gateway.client().chat.completions.with_raw_response.create(model=model, messages=messages)
    completion = raw.parse()
    text = completion.choices[0].message.content
    gateway.track(messages[1]["content"], text)
    event = gateway.wait_for_event(raw.headers.get(REQUEST_ID_HEADER))

    prompt_tokens = mock_chat_prompt_tokens(messages)
    completion_tokens = word_count(text)
    assert_common_fields(gateway, event, "chat.completions", model)
    assert event["upstream_model"] == model
    assert event["stream"] is False
    assert event["prompt_tokens"] == prompt_tokens == completion.usage.prompt_tokens
    assert event["completion_tokens"] == completion_tokens == completion.usage.completion_tokens
    assert event["total_tokens"] == prompt_tokens + completion_tokens
    assert event["cached_tokens"] == 0
    assert event["reasoning_tokens"] == 0
    assert event["tokens_estimated"] is False
    assert event["cost_usd"] == pytest.approx(gateway.pricing.cost(model, prompt_tokens, completion_tokens), rel=1e-9)
    assert event["potential_cost_usd"] == pytest.approx(event["cost_usd"], rel=1e-9)


def test_cached_tokens_priced(gateway: Gateway) -> None:
    messages = [{"role": "user", "content": unique_text("one two three four five six seven eight nine ten")}]

    raw = gateway.client().chat.completions.with_raw_response.create(
        model="gpt-4o", messages=messages, extra_headers={"x-mock-cached-tokens": "6"}
    )
    text = raw.parse().choices[0].message.content
    gateway.track(messages[0]["content"], text)
    event = gateway.wait_for_event(raw.headers.get(REQUEST_ID_HEADER))

    prompt_tokens = mock_chat_prompt_tokens(messages)
    completion_tokens = word_count(text)
    expected = gateway.pricing.cost("gpt-4o", prompt_tokens, completion_tokens, cached_tokens=6)
    assert event["cached_tokens"] == 6
    assert event["prompt_tokens"] == prompt_tokens
    assert event["cost_usd"] == pytest.approx(expected, rel=1e-9)
    assert event["cost_usd"] < gateway.pricing.cost("gpt-4o", prompt_tokens, completion_tokens)


def test_completion_event_exact(gateway: Gateway) -> None:
    prompt = unique_text("The quick brown fox")

    raw = gateway.client().completions.with_raw_response.create(model="gpt-4o-mini", prompt=prompt, max_tokens=4)
    completion = raw.parse()
    text = completion.choices[0].text
    gateway.track(prompt, text)
    event = gateway.wait_for_event(raw.headers.get(REQUEST_ID_HEADER))

    assert text == "Mock completion of: The"
    assert completion.choices[0].finish_reason == "length"
    assert_common_fields(gateway, event, "completions", "gpt-4o-mini")
    assert event["prompt_tokens"] == word_count(prompt)
    assert event["completion_tokens"] == 4
    assert event["total_tokens"] == word_count(prompt) + 4
    assert event["cost_usd"] == pytest.approx(gateway.pricing.cost("gpt-4o-mini", word_count(prompt), 4), rel=1e-9)


def test_embeddings_event_exact(gateway: Gateway) -> None:
    inputs = [unique_text("first text to embed"), "second"]

    raw = gateway.client().embeddings.with_raw_response.create(model="text-embedding-3-small", input=inputs)
    gateway.track(inputs[0])
    event = gateway.wait_for_event(raw.headers.get(REQUEST_ID_HEADER))

    prompt_tokens = word_count(inputs[0]) + 1
    assert_common_fields(gateway, event, "embeddings", "text-embedding-3-small")
    assert event["stream"] is False
    assert event["prompt_tokens"] == prompt_tokens
    assert event["completion_tokens"] == 0
    assert event["total_tokens"] == prompt_tokens
    assert event["cost_usd"] == pytest.approx(gateway.pricing.cost("text-embedding-3-small", prompt_tokens, 0), rel=1e-9)


def test_upstream_model_recorded(gateway_factory) -> None:
    gateway = gateway_factory(config_overrides={"models": {"gpt-4o": {"upstream_model": "mock-gpt-4o"}}})
    messages = [{"role": "user", "content": unique_text("Renamed model")}]

    raw = gateway.client().chat.completions.with_raw_response.create(model="gpt-4o", messages=messages)
    text = raw.parse().choices[0].message.content
    gateway.track(messages[0]["content"], text)
    event = gateway.wait_for_event(raw.headers.get(REQUEST_ID_HEADER))

    assert event["model"] == "gpt-4o"
    assert event["upstream_model"] == "mock-gpt-4o"
    # The price is the one of the name that the client requested.
    expected = gateway.pricing.cost("gpt-4o", mock_chat_prompt_tokens(messages), word_count(text))
    assert event["cost_usd"] == pytest.approx(expected, rel=1e-9)


def test_missing_usage_estimated(gateway: Gateway) -> None:
    messages = [{"role": "user", "content": unique_text("Count these tokens yourself please")}]

    raw = gateway.client().chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=messages, extra_headers={"x-mock-no-usage": "1"}
    )
    completion = raw.parse()
    gateway.track(messages[0]["content"], completion.choices[0].message.content)
    event = gateway.wait_for_event(raw.headers.get(REQUEST_ID_HEADER))

    assert completion.usage is None
    assert event["tokens_estimated"] is True
    assert event["prompt_tokens"] > 0
    assert event["completion_tokens"] > 0
    assert event["total_tokens"] == event["prompt_tokens"] + event["completion_tokens"]
    expected = gateway.pricing.cost("gpt-4o-mini", event["prompt_tokens"], event["completion_tokens"])
    assert event["cost_usd"] == pytest.approx(expected, rel=1e-9)


def test_event_per_request(gateway: Gateway) -> None:
    client = gateway.client()
    request_ids = []
    for number in range(5):
        prompt = unique_text(f"Request number {number}")
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}]
        )
        gateway.track(prompt, raw.parse().choices[0].message.content)
        request_ids.append(raw.headers.get(REQUEST_ID_HEADER))

    events = gateway.wait_for_events(5)

    assert len(set(request_ids)) == 5
    assert sorted(event["id"] for event in events) == sorted(request_ids)
    # usage list returns the newest event first.
    created = [event["created_at_ms"] for event in events]
    assert created == sorted(created, reverse=True)


def test_rejected_request_recorded(gateway: Gateway) -> None:
    response = gateway.post("/chat/completions", b'{"model": "no-such-model", "messages": []}')
    event = gateway.wait_for_event(response.headers[REQUEST_ID_HEADER])

    assert response.status == 400
    assert event["status"] == 400
    assert event["error_type"] == "invalid_request"
    assert event["total_tokens"] == 0
    assert event["cost_usd"] == 0


def test_multiple_choices_counted(gateway: Gateway) -> None:
    messages = [{"role": "user", "content": unique_text("Give me two answers")}]

    raw = gateway.client().chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages, n=2)
    completion = raw.parse()
    texts = [choice.message.content for choice in completion.choices]
    gateway.track(messages[0]["content"], *texts)
    event = gateway.wait_for_event(raw.headers.get(REQUEST_ID_HEADER))

    assert len(texts) == 2
    assert event["completion_tokens"] == sum(word_count(text) for text in texts)
    assert event["prompt_tokens"] == mock_chat_prompt_tokens(messages)


def test_concurrent_requests_accounted(gateway: Gateway) -> None:
    count = 40
    client = gateway.client()

    def send(number: int) -> str:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"concurrent request {number}"}]
        )
        return raw.headers.get(REQUEST_ID_HEADER)

    with ThreadPoolExecutor(max_workers=8) as pool:
        request_ids = list(pool.map(send, range(count)))
    events = gateway.wait_for_events(count)

    assert len(set(request_ids)) == count
    assert sorted(event["id"] for event in events) == sorted(request_ids)
    # "concurrent request N" is 3 words plus 4 tokens for the message.
    assert all(event["prompt_tokens"] == 7 for event in events)
