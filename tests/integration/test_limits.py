"""Quotas, per-key rate limits and address limits, end to end through the real gateway.

Each test configures the `pro` plan (the harness's project uses it) and checks the 429
responses, their `Retry-After` and error codes, the `x-ratelimit-*` headers, and that rejected
requests never reach the mock provider.
"""

from __future__ import annotations

import json
import math
import threading
import time
from typing import Any

import pytest

from harness import (
    LOOPBACK,
    Gateway,
    SharedDatabaseNode,
    admin_get,
    http_request,
    http_request_from,
    wait_until,
)

ADMIN_TOKEN = "limits-admin-token-0123456789"
ADMIN_ENV = {"WATCHLLM_ADMIN_TOKEN": ADMIN_TOKEN}


def chat_body(content: str = "hi", max_tokens: int | None = None) -> bytes:
    body: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return json.dumps(body).encode()


def limits_of(gateway: Gateway) -> dict[str, Any]:
    response = admin_get(gateway, f"/admin/projects/{gateway.project_id}/limits", ADMIN_TOKEN)
    assert response.status == 200, response.body
    return response.json()


def wait_settled(gateway: Gateway) -> dict[str, Any]:
    """Wait until no request of the project has a reservation, and return its limits."""

    def settled() -> dict[str, Any] | None:
        found = limits_of(gateway)
        month = found["month"]
        return found if month is not None and month["reserved"]["requests"] == 0 else None

    return wait_until(settled, 10.0, "reservations were not settled")


def plan(**limits: Any) -> dict[str, Any]:
    return {"limits": {"plans": {"pro": limits}}}


def test_tokens_per_minute_admits_two_of_five(gateway_factory, mock_upstream) -> None:
    gateway = gateway_factory(plan(tokens_per_minute=100), environment=ADMIN_ENV)
    # The gateway estimates 8 prompt tokens for "hi" plus max_tokens 42: 50 tokens each.
    body = chat_body("hi", max_tokens=42)
    before = mock_upstream.request_count()
    barrier = threading.Barrier(5)
    responses = []

    def send() -> None:
        barrier.wait()
        responses.append(gateway.post("/chat/completions", body, headers={"x-mock-delay-ms": "500"}))

    threads = [threading.Thread(target=send) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    admitted = [r for r in responses if r.status == 200]
    rejected = [r for r in responses if r.status == 429]
    assert len(responses) == 5
    assert len(admitted) <= 2, [r.status for r in responses]
    assert len(admitted) + len(rejected) == 5
    for response in rejected:
        assert response.json()["error"]["code"] == "rate_limit_exceeded"
        assert int(response.headers["retry-after"]) >= 1
    assert mock_upstream.request_count() - before == len(admitted)

    # The counter ends at the actual usage, not the estimates.
    wait_settled(gateway)
    used = sum(r.json()["usage"]["total_tokens"] for r in admitted)
    probe = gateway.post("/chat/completions", chat_body("hi", max_tokens=1))
    assert probe.status == 200, probe.body
    remaining = int(probe.headers["x-ratelimit-remaining-tokens"])
    assert probe.headers["x-ratelimit-limit-tokens"] == "100"
    # Within the same minute the window contains exactly the actual usage; after a minute
    # boundary the previous minute's share fades, so more remains.
    assert remaining >= 100 - used
    assert remaining <= 100 - used or time.gmtime().tm_sec < 5


def test_remaining_tokens_fall_request_by_request(gateway_factory, mock_upstream) -> None:
    gateway = gateway_factory(plan(monthly_tokens=1000), environment=ADMIN_ENV)
    # The mock counts 292 words + 4 prompt tokens and 4 completion tokens: 300 in all.
    body = chat_body(" ".join(["word"] * 292), max_tokens=4)
    seen = []
    for _ in range(3):
        response = gateway.post("/chat/completions", body)
        assert response.status == 200, response.body
        assert response.json()["usage"]["total_tokens"] == 300
        seen.append(int(response.headers["x-ratelimit-remaining-tokens"]))
        assert response.headers["x-ratelimit-limit-tokens"] == "1000"
        wait_settled(gateway)
    assert seen == [1000, 700, 400]

    before = mock_upstream.request_count()
    rejected = gateway.post("/chat/completions", body)
    assert rejected.status == 429
    assert rejected.json()["error"]["code"] == "monthly_token_quota_exceeded"
    assert rejected.headers["x-ratelimit-remaining-tokens"] == "100"
    assert int(rejected.headers["retry-after"]) >= 1
    assert mock_upstream.request_count() == before


def test_request_quota_survives_restart(gateway_factory, mock_upstream) -> None:
    gateway = gateway_factory(plan(monthly_requests=3), environment=ADMIN_ENV)
    client = gateway.client()
    for _ in range(2):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    gateway.wait_for_events(2)
    gateway.restart()

    assert limits_of(gateway)["month"]["used"]["requests"] == 2
    third = gateway.post("/chat/completions", chat_body())
    assert third.status == 200
    assert third.headers["x-ratelimit-remaining-requests"] == "0"
    wait_settled(gateway)

    before = mock_upstream.request_count()
    fourth = gateway.post("/chat/completions", chat_body())
    assert fourth.status == 429
    assert fourth.json()["error"]["code"] == "monthly_request_quota_exceeded"
    assert fourth.json()["error"]["type"] == "rate_limit_error"
    # Retry-After runs to the end of the calendar month (UTC here).
    assert 1 <= int(fourth.headers["retry-after"]) <= 31 * 24 * 3600
    assert mock_upstream.request_count() == before


def test_concurrency_limit(gateway_factory) -> None:
    gateway = gateway_factory(plan(max_concurrent_requests=1), environment=ADMIN_ENV)
    slow: list[Any] = []
    thread = threading.Thread(target=lambda: slow.append(gateway.post("/chat/completions", chat_body(), headers={"x-mock-delay-ms": "1500"})))
    thread.start()
    wait_until(lambda: limits_of(gateway)["month"] and limits_of(gateway)["month"]["reserved"]["requests"] == 1, 10.0, "the slow request was not admitted")
    second = gateway.post("/chat/completions", chat_body())
    thread.join(30)
    assert second.status == 429
    assert second.json()["error"]["code"] == "concurrency_limit_exceeded"
    assert second.headers["retry-after"] == "1"
    assert slow[0].status == 200


def test_two_nodes_stay_within_bound(gateway_factory, backend, tmp_path) -> None:
    if backend != "postgres":
        pytest.skip("several nodes share totals only through PostgreSQL")
    interval_ms = 300
    limit = 20
    overrides = {"limits": {"sync_interval_ms": interval_ms, "plans": {"pro": {"monthly_requests": limit}}}}
    first = gateway_factory(overrides, environment=ADMIN_ENV)
    second = SharedDatabaseNode(first, tmp_path / "node-2")
    second.prepare()
    try:
        second.start()
        nodes = [first, second]
        statuses = []
        started = time.monotonic()
        for index in range(80):
            response = nodes[index % 2].post("/chat/completions", chat_body())
            statuses.append(response.status)
            time.sleep(0.02)
        elapsed = time.monotonic() - started
        admitted = statuses.count(200)
        assert set(statuses) <= {200, 429}, statuses

        # The bound: each node may admit what the other admitted in one interval plus a
        # round trip, which these sequential requests make measurable.
        per_node_per_interval = math.ceil((interval_ms / 1000) / (2 * elapsed / len(statuses))) + 1
        assert limit <= admitted <= limit + 2 * per_node_per_interval, (admitted, per_node_per_interval)

        # Once reconciled, both nodes reject.
        time.sleep(3 * interval_ms / 1000)
        for node in nodes:
            response = node.post("/chat/completions", chat_body())
            assert response.status == 429
            assert response.json()["error"]["code"] == "monthly_request_quota_exceeded"
    finally:
        second.stop()


def ip_limits(**values: Any) -> dict[str, Any]:
    return {"limits": {"ip": values}}


def models_from(gateway: Gateway, source: str, key: str | None = None, headers: dict[str, str] | None = None):
    request_headers = {"Authorization": f"Bearer {key or gateway.key}"}
    request_headers.update(headers or {})
    return http_request_from(source, gateway.base_url + "/models", headers=request_headers)


def test_burst_from_one_address_limited(gateway_factory) -> None:
    gateway = gateway_factory(ip_limits(requests_per_second=5, burst=5))
    statuses = [models_from(gateway, "127.0.0.1").status for _ in range(15)]
    assert statuses.count(200) <= 6, statuses
    assert 429 in statuses
    limited = models_from(gateway, "127.0.0.1")
    assert limited.status == 429
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    # Another address is counted on its own.
    assert models_from(gateway, "127.0.0.2").status == 200


def test_allow_list_never_limited(gateway_factory) -> None:
    gateway = gateway_factory(ip_limits(requests_per_second=2, burst=2, allow=["127.0.0.5/32"]))
    assert all(models_from(gateway, "127.0.0.5").status == 200 for _ in range(10))


def test_forwarded_for_only_from_trusted_proxy(gateway_factory) -> None:
    trusting = gateway_factory(ip_limits(requests_per_second=3, burst=3, trusted_proxies=["127.0.0.1/32"]))
    spoof = {"X-Forwarded-For": "198.51.100.1"}
    statuses = [models_from(trusting, "127.0.0.1", headers=spoof).status for _ in range(8)]
    assert 429 in statuses
    # Behind the trusted proxy, another client address has its own count.
    assert models_from(trusting, "127.0.0.1", headers={"X-Forwarded-For": "198.51.100.2"}).status == 200

    # From a peer that is not trusted, the header is ignored: changing it does not help.
    untrusted = [models_from(trusting, "127.0.0.9", headers={"X-Forwarded-For": f"203.0.113.{i}"}).status for i in range(8)]
    assert 429 in untrusted


def test_bad_keys_cut_off_one_address(gateway_factory) -> None:
    gateway = gateway_factory(ip_limits(requests_per_second=100, burst=100, failed_auth_per_minute=5))
    bad = [models_from(gateway, "127.0.0.3", key=f"wllm_guess{i}").status for i in range(10)]
    assert bad[:5] == [401] * 5, bad
    assert bad[5:] == [429] * 5, bad
    blocked = models_from(gateway, "127.0.0.3")
    assert blocked.status == 429
    assert blocked.json()["error"]["code"] == "too_many_failed_authentications"
    assert int(blocked.headers["retry-after"]) >= 1
    # Good requests from other addresses go on.
    assert models_from(gateway, "127.0.0.4").status == 200


def test_ip_limits_reload_with_config(gateway_factory) -> None:
    gateway = gateway_factory(ip_limits(requests_per_second=1000, burst=1000))
    assert all(models_from(gateway, "127.0.0.6").status == 200 for _ in range(10))
    gateway.config_overrides = ip_limits(requests_per_second=2, burst=2)
    import yaml

    gateway.config_path.write_text(yaml.safe_dump(gateway.config(), sort_keys=False))

    def limited() -> bool:
        return any(models_from(gateway, "127.0.0.7").status == 429 for _ in range(5))

    wait_until(limited, 10.0, "the reloaded address limit was not applied", interval=0.5)


def test_limits_headers_absent_without_limits(gateway) -> None:
    response = gateway.post("/chat/completions", chat_body())
    assert response.status == 200
    assert "x-ratelimit-limit-requests" not in response.headers
    assert http_request(f"http://{LOOPBACK}:{gateway.listen_port}/v1/models", headers={"Authorization": f"Bearer {gateway.key}"}).status == 200
