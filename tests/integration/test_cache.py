"""The response cache end to end: exact and semantic hits, what is never cached, stream replay,
accounting of hits, tenant isolation and persistence across a restart.

Semantic tests use the real all-MiniLM-L6-v2 model that scripts/setup.sh installs.
"""

from __future__ import annotations

import http.client
import json
import secrets
import time
from typing import Any

import pytest

from harness import Gateway, cache_overrides, http_request, sse_data, unique_text

CHAT = "/chat/completions"
ADMIN_TOKEN = "cache-admin-" + secrets.token_hex(12)
# Gateways reload the stored cache settings every second; this leaves room for the query and a
# loaded machine.
SETTINGS_RELOAD_S = 2.5


def chat_body(content: str, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]}
    body.update(fields)
    return body


def send(gateway: Gateway, body: dict[str, Any], headers: dict[str, str] | None = None):
    gateway.track(*(m["content"] for m in body.get("messages", []) if isinstance(m.get("content"), str)))
    return gateway.post(CHAT, json.dumps(body).encode(), headers)


def reply_text(response) -> str:
    assert response.status == 200, response.body
    return response.json()["choices"][0]["message"]["content"]


def stream_content(response) -> tuple[str, list[dict[str, Any]], list[str]]:
    """Return the joined content, the parsed chunks and the raw event data of an SSE response."""
    assert response.status == 200, response.body
    events = sse_data(response.body)
    chunks = [json.loads(event) for event in events if event != "[DONE]"]
    text = "".join(
        choice["delta"].get("content") or "" for chunk in chunks for choice in chunk.get("choices", [])
    )
    return text, chunks, events


def wait_stored(seconds: float = 0.3) -> None:
    """Give the gateway time to store an answer: the store runs after the response is sent."""
    time.sleep(seconds)


@pytest.fixture
def cached(gateway_factory) -> Gateway:
    return gateway_factory(cache_overrides())


def test_exact_hit_served_and_accounted(cached: Gateway) -> None:
    body = chat_body(unique_text("What is the capital of France?"))
    first = send(cached, body)
    assert first.headers["x-watchllm-cache"] == "miss"
    wait_stored()
    upstream_before = cached.mock.request_count()

    second = send(cached, body)
    assert second.headers["x-watchllm-cache"] == "hit-exact"
    assert "x-watchllm-cache-similarity" not in second.headers
    assert second.body == first.body
    assert cached.mock.request_count() == upstream_before

    original = cached.wait_for_event(first.headers["x-watchllm-request-id"])
    hit = cached.wait_for_event(second.headers["x-watchllm-request-id"])
    assert original["cache_status"] == "miss"
    assert hit["cache_status"] == "hit-exact"
    assert hit["cost_usd"] == 0
    assert hit["potential_cost_usd"] == pytest.approx(original["cost_usd"])
    assert original["cost_usd"] > 0
    assert hit["prompt_tokens"] == original["prompt_tokens"]
    assert hit["completion_tokens"] == original["completion_tokens"]


def test_key_order_and_whitespace_ignored(cached: Gateway) -> None:
    text = unique_text("Explain photosynthesis")
    cached.track(text)
    first = cached.post(CHAT, json.dumps({"model": "gpt-4o-mini", "temperature": 1, "messages": [{"role": "user", "content": text}]}).encode())
    assert first.status == 200
    wait_stored()
    reordered = '{ "messages": [ { "content": %s, "role": "user" } ],\n  "temperature": 1.0, "model": "gpt-4o-mini" }' % json.dumps(text)
    second = cached.post(CHAT, reordered.encode())
    assert second.headers["x-watchllm-cache"] == "hit-exact"


@pytest.mark.parametrize(
    "change",
    [
        {"temperature": 0.2},
        {"n": 1, "max_tokens": 7},
        {"top_p": 0.5},
        {"seed": 42},
        {"tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]},
        {"model": "gpt-4o"},
    ],
)
def test_other_parameters_miss(cached: Gateway, change: dict[str, Any]) -> None:
    text = unique_text("How do I boil an egg?")
    send(cached, chat_body(text))
    wait_stored()
    changed = send(cached, chat_body(text, **change))
    assert changed.headers["x-watchllm-cache"] == "miss"


def test_semantic_rewording_hits_with_original_answer(cached: Gateway) -> None:
    original = send(cached, chat_body("How do I reset my password?"))
    wait_stored(0.5)
    reworded = send(cached, chat_body("How can I change my password if I forgot it?"))
    assert reworded.headers["x-watchllm-cache"] == "hit-semantic"
    similarity = float(reworded.headers["x-watchllm-cache-similarity"])
    assert 0.85 <= similarity < 1.0
    assert reply_text(reworded) == reply_text(original)

    event = cached.wait_for_event(reworded.headers["x-watchllm-request-id"])
    assert event["cache_status"] == "hit-semantic"
    assert event["cache_similarity"] == pytest.approx(similarity, abs=1e-4)
    assert event["cost_usd"] == 0


def test_unrelated_and_near_miss_prompts_never_share(cached: Gateway) -> None:
    first = send(cached, chat_body("Convert 5 miles to kilometers"))
    wait_stored(0.5)
    for prompt in ["Convert 8 miles to kilometers", "What is the capital of Australia?", "Write a haiku about the sea"]:
        other = send(cached, chat_body(prompt))
        assert other.headers["x-watchllm-cache"] == "miss", prompt
        assert reply_text(other) != reply_text(first)


def test_guard_rejects_entity_swap(cached: Gateway) -> None:
    send(cached, chat_body("What is the capital of Austria?"))
    wait_stored(0.5)
    swapped = send(cached, chat_body("What is the capital of Australia?"))
    assert swapped.headers["x-watchllm-cache"] == "miss"


def test_semantic_requires_same_context(cached: Gateway) -> None:
    question = "How do I reset my password?"
    base = [{"role": "system", "content": "You are a support agent for a bank."}]
    send(cached, {"model": "gpt-4o-mini", "messages": base + [{"role": "user", "content": question}]})
    wait_stored(0.5)
    reworded = "How can I change my password if I forgot it?"
    contexts = [
        [{"role": "system", "content": "You are a support agent for a game."}],
        [],
        base + [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi, how can I help?"}],
    ]
    for context in contexts:
        response = send(cached, {"model": "gpt-4o-mini", "messages": context + [{"role": "user", "content": reworded}]})
        assert response.headers["x-watchllm-cache"] == "miss", context
    same = send(cached, {"model": "gpt-4o-mini", "messages": base + [{"role": "user", "content": reworded}]})
    assert same.headers["x-watchllm-cache"] == "hit-semantic"


def test_threshold_header_only_raises(cached: Gateway) -> None:
    send(cached, chat_body("How do I reset my password?"))
    wait_stored(0.5)
    reworded = chat_body("How can I change my password if I forgot it?")
    strict = send(cached, reworded, {"x-watchllm-cache-threshold": "0.99"})
    assert strict.headers["x-watchllm-cache"] == "miss"
    wait_stored(0.5)
    lowered = send(cached, chat_body("Write a haiku about the sea"), {"x-watchllm-cache-threshold": "0.1"})
    assert lowered.headers["x-watchllm-cache"] == "miss"


def test_tenants_never_share_entries(cached: Gateway) -> None:
    project = json.loads(cached.cli("project", "create", "tenant-b").stdout)
    assert project["id"] != cached.project_id
    other_key = cached.cli("key", "create", "tenant-b").stdout.strip()
    cached.track(other_key)
    as_tenant_b = {"Authorization": f"Bearer {other_key}"}
    body = chat_body("What is the tallest mountain in the world?")
    send(cached, body)
    wait_stored(0.5)
    time.sleep(0.5)  # the key refresh interval of the test config is 200 ms

    reworded = send(cached, chat_body("Which mountain is the highest on Earth?"), as_tenant_b)
    assert reworded.status == 200, reworded.body
    assert reworded.headers["x-watchllm-cache"] == "miss"
    # The threshold of 1 keeps tenant B's own reworded entry from answering; A's exact entry
    # must not answer either.
    identical = send(cached, body, dict(as_tenant_b, **{"x-watchllm-cache-threshold": "1"}))
    assert identical.headers["x-watchllm-cache"] == "miss"


@pytest.mark.parametrize(
    "failure",
    [{"x-mock-status": "529"}, {"x-mock-status": "429"}, {"x-mock-error-in-200": "1"}],
)
def test_errors_not_cached(cached: Gateway, failure: dict[str, str]) -> None:
    body = chat_body(unique_text("Why is the sky blue?"))
    first = send(cached, body, failure)
    assert first.headers.get("x-watchllm-cache") == "miss"
    wait_stored()
    before = cached.mock.request_count()
    second = send(cached, body)
    assert second.status == 200
    assert second.headers["x-watchllm-cache"] == "miss"
    assert cached.mock.request_count() == before + 1


def test_cut_stream_not_cached(cached: Gateway) -> None:
    body = chat_body(unique_text("Tell me a long story"), stream=True)
    # The gateway passes the cut on: the client sees the chunked body end early.
    with pytest.raises(http.client.IncompleteRead):
        send(cached, body, {"x-mock-cut-after": "2"})
    wait_stored()
    again = send(cached, body)
    assert again.headers["x-watchllm-cache"] == "miss"


def test_stream_replayed_in_chunks(cached: Gateway) -> None:
    body = chat_body(unique_text("Describe the ocean in a few words"), stream=True, max_tokens=40)
    first = send(cached, body, {"x-mock-chunks": "5"})
    original_text, original_chunks, _ = stream_content(first)
    wait_stored()

    replay = send(cached, body)
    assert replay.headers["x-watchllm-cache"] == "hit-exact"
    assert replay.headers["content-type"].startswith("text/event-stream")
    text, chunks, events = stream_content(replay)
    assert text == original_text
    assert len([c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]) >= 2
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert events[-1] == "[DONE]"
    assert all("usage" not in chunk or chunk["usage"] is None for chunk in chunks)

    with_usage = send(cached, dict(body, stream_options={"include_usage": True}))
    assert with_usage.headers["x-watchllm-cache"] == "hit-exact"
    _, usage_chunks, _ = stream_content(with_usage)
    assert usage_chunks[-1]["usage"]["completion_tokens"] > 0


def test_forms_interchange(cached: Gateway) -> None:
    json_first = chat_body(unique_text("Name a primary colour"))
    stored_json = send(cached, json_first)
    wait_stored()
    as_stream = send(cached, dict(json_first, stream=True))
    assert as_stream.headers["x-watchllm-cache"] == "hit-exact"
    text, _, events = stream_content(as_stream)
    assert text == reply_text(stored_json)
    assert events[-1] == "[DONE]"

    stream_first = chat_body(unique_text("Name a warm colour"), stream=True)
    stored_stream = send(cached, stream_first)
    wait_stored()
    as_json = send(cached, dict(stream_first, stream=False))
    assert as_json.headers["x-watchllm-cache"] == "hit-exact"
    assert reply_text(as_json) == stream_content(stored_stream)[0]
    assert as_json.json()["choices"][0]["finish_reason"] == "stop"


def test_sdk_reads_replayed_stream(cached: Gateway) -> None:
    text = unique_text("Count to three")
    cached.track(text)
    client = cached.client()
    messages = [{"role": "user", "content": text}]
    first = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True) if c.choices)
    wait_stored()
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages, stream=True)
    assert raw.headers["x-watchllm-cache"] == "hit-exact"
    replayed = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert replayed == first


def test_client_directives(cached: Gateway) -> None:
    body = chat_body(unique_text("What is an API?"))
    off = send(cached, body, {"x-watchllm-cache": "off"})
    assert off.headers["x-watchllm-cache"] == "bypass"
    wait_stored()
    assert send(cached, body).headers["x-watchllm-cache"] == "miss"

    no_store = chat_body(unique_text("What is a prime number?"))
    assert send(cached, no_store, {"Cache-Control": "no-store"}).headers["x-watchllm-cache"] == "bypass"
    wait_stored()
    assert send(cached, no_store).headers["x-watchllm-cache"] == "miss"

    no_cache = chat_body(unique_text("What is inflation?"))
    send(cached, no_cache)
    wait_stored()
    fresh = send(cached, no_cache, {"Cache-Control": "no-cache"})
    assert fresh.headers["x-watchllm-cache"] == "bypass"
    wait_stored()
    assert send(cached, no_cache).headers["x-watchllm-cache"] == "hit-exact"


def test_multiple_choices_bypass(cached: Gateway) -> None:
    body = chat_body(unique_text("Suggest a name for a cat"), n=2)
    assert send(cached, body).headers["x-watchllm-cache"] == "bypass"
    wait_stored()
    assert send(cached, body).headers["x-watchllm-cache"] == "bypass"


def test_entries_and_index_survive_restart(cached: Gateway) -> None:
    exact = chat_body(unique_text("What causes earthquakes?"))
    first = send(cached, exact)
    original = send(cached, chat_body("How do I stop my dog from barking?"))
    wait_stored(1.0)
    cached.restart()
    assert send(cached, exact).body == first.body
    reworded = send(cached, chat_body("How can I get my dog to stop barking?"))
    assert reworded.headers["x-watchllm-cache"] == "hit-semantic"
    assert reply_text(reworded) == reply_text(original)


def test_project_settings_apply(gateway_factory) -> None:
    gateway = gateway_factory(cache_overrides(projects={"integration": {"semantic": False}}))
    send(gateway, chat_body("How do I reset my password?"))
    wait_stored(0.5)
    assert send(gateway, chat_body("How can I change my password if I forgot it?")).headers["x-watchllm-cache"] == "miss"
    assert send(gateway, chat_body("How do I reset my password?")).headers["x-watchllm-cache"] == "hit-exact"


def test_cache_off_by_default(gateway: Gateway) -> None:
    response = send(gateway, chat_body("hello"))
    assert response.status == 200
    assert "x-watchllm-cache" not in response.headers


def test_missing_model_fails_startup(gateway_factory, tmp_path) -> None:
    missing = tmp_path / "no-model"
    overrides = cache_overrides()
    overrides["cache"]["semantic"]["model_dir"] = str(missing)
    gateway = gateway_factory(overrides, start=False)
    gateway.spawn()
    assert gateway.process is not None
    code = gateway.process.wait(30)
    assert code != 0
    log = gateway.stderr_text()
    assert str(missing) in log
    assert "scripts/install-model.sh" in log


# --- per-project settings in the store ------------------------------------------------------


def cache_settings(gateway: Gateway, method: str = "GET", body: Any = None, token: str | None = ADMIN_TOKEN, project: str = Gateway.PROJECT_NAME):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = body
    if body is not None and not isinstance(body, bytes):
        data = json.dumps(body).encode()
    return http_request(f"{gateway.admin_url}/admin/projects/{project}/cache", method, data, headers)


def support_chat(system: str, question: str) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}]}


@pytest.fixture
def administered(gateway_factory) -> Gateway:
    gateway = gateway_factory(cache_overrides(), environment={"WATCHLLM_ADMIN_TOKEN": ADMIN_TOKEN})
    gateway.track(ADMIN_TOKEN)
    return gateway


def test_stored_threshold_turns_semantic_hit_into_miss(administered: Gateway) -> None:
    before = cache_settings(administered)
    assert before.status == 200, before.body
    assert before.json()["override"] is None
    assert before.json()["effective"]["threshold"] == pytest.approx(0.85)

    # The two questions have a similarity of about 0.87; each context is a separate namespace.
    question, reworded = "How do I reset my password?", "How can I change my password if I forgot it?"
    send(administered, support_chat("You are a support agent for a bank.", question))
    wait_stored(0.5)
    hit = send(administered, support_chat("You are a support agent for a bank.", reworded))
    assert hit.headers["x-watchllm-cache"] == "hit-semantic"

    changed = cache_settings(administered, "PATCH", {"threshold": 0.95})
    assert changed.status == 200, changed.body
    assert changed.json()["override"]["threshold"] == pytest.approx(0.95)
    assert changed.json()["effective"]["threshold"] == pytest.approx(0.95)
    assert changed.json()["config"]["threshold"] == pytest.approx(0.85)
    time.sleep(SETTINGS_RELOAD_S)

    send(administered, support_chat("You are a support agent for a shop.", question))
    wait_stored(0.5)
    strict = send(administered, support_chat("You are a support agent for a shop.", reworded))
    assert strict.headers["x-watchllm-cache"] == "miss"
    assert "x-watchllm-cache-similarity" not in strict.headers

    # The request header still cannot lower the threshold below the project's.
    send(administered, support_chat("You are a support agent for a school.", question))
    wait_stored(0.5)
    lowered = send(administered, support_chat("You are a support agent for a school.", reworded), {"x-watchllm-cache-threshold": "0.5"})
    assert lowered.headers["x-watchllm-cache"] == "miss"

    cleared = cache_settings(administered, "DELETE")
    assert cleared.status == 200, cleared.body
    assert cleared.json()["override"] is None
    time.sleep(SETTINGS_RELOAD_S)
    send(administered, support_chat("You are a support agent for a hotel.", question))
    wait_stored(0.5)
    again = send(administered, support_chat("You are a support agent for a hotel.", reworded))
    assert again.headers["x-watchllm-cache"] == "hit-semantic"


def test_cli_turns_semantic_and_cache_off(administered: Gateway) -> None:
    shown = json.loads(administered.cli("cache", "set", Gateway.PROJECT_NAME, "--semantic", "false").stdout)
    assert shown["override"]["semantic"] is False
    assert shown["effective"]["semantic"] is False
    assert shown["effective"]["enabled"] is True
    time.sleep(SETTINGS_RELOAD_S)

    question = chat_body("How do I stop my dog from barking?")
    first = send(administered, question)
    assert first.headers["x-watchllm-cache"] == "miss"
    wait_stored(0.5)
    reworded = send(administered, chat_body("How can I get my dog to stop barking?"))
    assert reworded.headers["x-watchllm-cache"] == "miss"
    assert send(administered, question).headers["x-watchllm-cache"] == "hit-exact"

    administered.cli("cache", "set", Gateway.PROJECT_NAME, "--enabled", "false")
    time.sleep(SETTINGS_RELOAD_S)
    upstream_before = administered.mock.request_count()
    off = send(administered, question)
    assert off.status == 200
    assert "x-watchllm-cache" not in off.headers
    assert administered.mock.request_count() == upstream_before + 1

    shown = json.loads(administered.cli("cache", "clear", Gateway.PROJECT_NAME).stdout)
    assert shown["override"] is None
    time.sleep(SETTINGS_RELOAD_S)
    assert send(administered, question).headers["x-watchllm-cache"] == "hit-exact"


def test_stored_ttl_expires_entries(administered: Gateway) -> None:
    administered.cli("cache", "set", Gateway.PROJECT_NAME, "--ttl-seconds", "1")
    time.sleep(SETTINGS_RELOAD_S)
    body = chat_body(unique_text("What is a black hole?"))
    send(administered, body)
    wait_stored()
    assert send(administered, body).headers["x-watchllm-cache"] == "hit-exact"
    time.sleep(1.5)
    assert send(administered, body).headers["x-watchllm-cache"] == "miss"


def test_store_wins_over_config_entry(gateway_factory) -> None:
    overrides = cache_overrides(projects={Gateway.PROJECT_NAME: {"threshold": 0.9, "ttl_seconds": 60}})
    gateway = gateway_factory(overrides, environment={"WATCHLLM_ADMIN_TOKEN": ADMIN_TOKEN})
    gateway.track(ADMIN_TOKEN)
    shown = cache_settings(gateway).json()
    assert shown["effective"]["threshold"] == pytest.approx(0.9)
    assert shown["effective"]["ttl_seconds"] == 60

    replaced = cache_settings(gateway, "PUT", {"ttl_seconds": 30})
    assert replaced.status == 200, replaced.body
    effective = replaced.json()["effective"]
    assert effective["ttl_seconds"] == 30
    # The override leaves the threshold to the project's config entry, not the default.
    assert effective["threshold"] == pytest.approx(0.9)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"threshold": 0}, "invalid_value"),
        ({"threshold": 1.5}, "invalid_value"),
        ({"ttl_seconds": 0}, "invalid_value"),
        ({"ttl_seconds": -5}, "invalid_json"),
        ({"treshold": 0.9}, "invalid_json"),
        ({"enabled": "yes"}, "invalid_json"),
        (b"not json", "invalid_json"),
    ],
)
def test_invalid_settings_rejected(administered: Gateway, body: Any, code: str) -> None:
    response = cache_settings(administered, "PATCH", body)
    assert response.status == 400, response.body
    error = response.json()["error"]
    assert error["code"] == code
    assert error["type"] == "invalid_request_error"
    assert error["message"]
    assert cache_settings(administered).json()["override"] is None


def test_settings_route_errors(administered: Gateway) -> None:
    assert cache_settings(administered, token=None).status == 401
    missing = cache_settings(administered, project="no-such-project")
    assert missing.status == 404
    assert missing.json()["error"]["code"] == "project_not_found"

    rejected = administered.cli("cache", "set", Gateway.PROJECT_NAME, "--threshold", "1.2", check=False)
    assert rejected.returncode != 0
    assert "threshold" in rejected.stderr
    nothing = administered.cli("cache", "set", Gateway.PROJECT_NAME, check=False)
    assert nothing.returncode != 0
    assert cache_settings(administered).json()["override"] is None
