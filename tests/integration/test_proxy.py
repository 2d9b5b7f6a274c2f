"""Requests through the gateway with the official OpenAI SDK, and what reaches the provider."""

from __future__ import annotations

import gzip
import hashlib
import json

from harness import MODELS, Gateway, mock_chat_prompt_tokens, unique_text, word_count

REQUEST_ID_HEADER = "x-watchllm-request-id"
ONE_MIB = 1024 * 1024


def test_chat_plain(gateway: Gateway) -> None:
    prompt = unique_text("Describe the weather in three short words")
    messages = [{"role": "user", "content": prompt}]

    raw = gateway.client().chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages)
    completion = raw.parse()
    text = completion.choices[0].message.content
    gateway.track(prompt, text)

    assert raw.http_response.status_code == 200
    assert text.startswith("Mock reply to: Describe the weather")
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "gpt-4o-mini"
    assert completion.usage.prompt_tokens == mock_chat_prompt_tokens(messages)
    assert completion.usage.completion_tokens == word_count(text)
    assert raw.headers.get(REQUEST_ID_HEADER)


def test_completion_plain(gateway: Gateway) -> None:
    prompt = unique_text("Once upon a time")

    completion = gateway.client().completions.create(model="gpt-4o-mini", prompt=prompt)
    text = completion.choices[0].text
    gateway.track(prompt, text)

    assert text.startswith("Mock completion of: Once upon a time")
    assert completion.usage.prompt_tokens == word_count(prompt)
    assert completion.usage.completion_tokens == word_count(text)


def test_embeddings_plain(gateway: Gateway) -> None:
    text = unique_text("embed this sentence")

    result = gateway.client().embeddings.create(model="text-embedding-3-small", input=[text, "second input"])
    gateway.track(text)

    assert len(result.data) == 2
    assert [item.index for item in result.data] == [0, 1]
    assert len(result.data[0].embedding) == 8
    assert result.data[0].embedding != result.data[1].embedding
    assert result.usage.prompt_tokens == word_count(text) + 2


def test_models_list(gateway: Gateway) -> None:
    models = gateway.client().models.list()

    assert sorted(model.id for model in models.data) == sorted(MODELS)


def test_bearer_key_not_forwarded(gateway: Gateway) -> None:
    prompt = unique_text("Is my key safe")

    completion = gateway.client().chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}]
    )
    gateway.track(prompt, completion.choices[0].message.content)
    upstream = gateway.mock.last_request()

    assert prompt in upstream["body"], "the mock's last request is not this test's request"
    assert "authorization" not in upstream["headers"]
    assert "x-api-key" not in upstream["headers"]
    for name, value in upstream["headers"].items():
        assert gateway.key not in value, f"the client's key reached the provider in header {name}"
    assert gateway.key not in upstream["body"]


def test_x_api_key_not_forwarded(gateway: Gateway) -> None:
    prompt = unique_text("Key in a custom header")
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]}).encode()

    response = gateway.post("/chat/completions", body, headers={"x-api-key": gateway.key})
    gateway.track(prompt, response.json()["choices"][0]["message"]["content"])
    upstream = gateway.mock.last_request()

    assert response.status == 200, response.body
    assert prompt in upstream["body"]
    assert "authorization" not in upstream["headers"]
    assert "x-api-key" not in upstream["headers"]
    for value in upstream["headers"].values():
        assert gateway.key not in value


def test_provider_key_replaces_client_key(gateway_factory) -> None:
    # A made-up provider key, which the mock does not check.
    provider_key = "sk-integration-provider-key"
    gateway = gateway_factory(
        config_overrides={"providers": {"mock": {"api_key_env": "WLTEST_PROVIDER_KEY"}}},
        environment={"WLTEST_PROVIDER_KEY": provider_key},
    )
    prompt = unique_text("Which key does the provider see")
    gateway.track(provider_key)

    completion = gateway.client().chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}]
    )
    gateway.track(prompt, completion.choices[0].message.content)
    upstream = gateway.mock.last_request()

    assert prompt in upstream["body"]
    assert upstream["headers"]["authorization"] == f"Bearer {provider_key}"
    for value in upstream["headers"].values():
        assert gateway.key not in value


def test_large_body_unchanged(gateway: Gateway) -> None:
    # Unusual spacing and key order, so that any re-serialization would change the bytes.
    prompt = unique_text("Summarize the padding")
    head = '{ "messages" : [ {"content": "%s", "role":"user"} ],   "model":"gpt-4o-mini", "padding": "' % prompt
    tail = '" }'
    padding = "x" * (ONE_MIB - len(head) - len(tail))
    body = (head + padding + tail).encode()
    assert len(body) == ONE_MIB

    response = gateway.post("/chat/completions", body)
    gateway.track(prompt, response.json()["choices"][0]["message"]["content"])
    upstream = gateway.mock.last_request()

    assert response.status == 200, response.body[:500]
    assert upstream["path"] == "/v1/chat/completions"
    assert upstream["body_len"] == ONE_MIB
    assert upstream["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_gzip_body_decoded(gateway: Gateway) -> None:
    prompt = unique_text("Compressed request body")
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]}).encode()

    response = gateway.post("/chat/completions", gzip.compress(body), headers={"Content-Encoding": "gzip"})
    content = response.json()["choices"][0]["message"]["content"]
    gateway.track(prompt, content)
    upstream = gateway.mock.last_request()

    assert response.status == 200, response.body
    assert content.startswith("Mock reply to: Compressed request body")
    assert "content-encoding" not in upstream["headers"]
    assert upstream["body_len"] == len(body)
    assert upstream["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_upstream_model_rewritten(gateway_factory) -> None:
    gateway = gateway_factory(config_overrides={"models": {"gpt-4o": {"upstream_model": "mock-gpt-4o"}}})
    prompt = unique_text("Which model answers")

    completion = gateway.client().chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": prompt}]
    )
    gateway.track(prompt, completion.choices[0].message.content)
    upstream = gateway.mock.last_request()
    sent = json.loads(upstream["body"])

    assert sent["model"] == "mock-gpt-4o"
    assert sent["messages"] == [{"role": "user", "content": prompt}]
