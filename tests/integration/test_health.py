"""Provider health probes, Retry-After cool-downs, and failover to a model's next provider."""

from __future__ import annotations

import contextlib
import errno
import json
import secrets
import socket
import time
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import openai
import pytest

from harness import FakeUpstream, Gateway, MockUpstreamOnPort, admin_request, free_port, wait_until

ADMIN_TOKEN = "admin-token-" + secrets.token_hex(12)
ENVIRONMENT = {"WATCHLLM_ADMIN_TOKEN": ADMIN_TOKEN}
BODY = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "route me"}]}).encode()


@pytest.fixture
def primary_mock(watchllm_binary: Path, tmp_path: Path) -> Iterator[MockUpstreamOnPort]:
    """A second mock upstream on a fixed port, the preferred provider of the tests below."""
    mock = MockUpstreamOnPort(watchllm_binary, tmp_path)
    mock.start()
    yield mock
    mock.stop()


def routed_config(primary_url: str, health: dict | None = None, failover: dict | None = None) -> dict:
    return {
        "providers": {"primary": {"base_url": primary_url, "connect_timeout_ms": 1000}},
        "models": {"gpt-4o-mini": {"provider": "primary", "fallbacks": ["mock"]}},
        "health": health or {"enabled": False},
        "failover": failover or {},
    }


def provider_status(gateway: Gateway, name: str) -> str:
    response = admin_request(gateway, "GET", "/health/detailed", ADMIN_TOKEN)
    return response.json()["providers"][name]["status"]


def request_count(mock: MockUpstreamOnPort) -> int | None:
    """Return the mock's POST count, or None while it is stopped."""
    try:
        return mock.request_count()
    except OSError:
        return None


def served_by(gateway: Gateway, primary: MockUpstreamOnPort) -> str:
    """Send one request and return which mock served it: primary or mock."""
    primary_before, fallback_before = request_count(primary), gateway.mock.request_count()
    response = gateway.post("/chat/completions", BODY)
    assert response.status == 200, response.body
    primary_after = request_count(primary)
    if primary_before is not None and primary_after is not None and primary_after > primary_before:
        return "primary"
    assert gateway.mock.request_count() > fallback_before
    return "mock"


def test_unhealthy_provider_skipped_then_back(gateway_factory, primary_mock: MockUpstreamOnPort) -> None:
    health = {"enabled": True, "interval_ms": 200, "timeout_ms": 500, "unhealthy_after": 2, "healthy_after": 2}
    gateway = gateway_factory(config_overrides=routed_config(primary_mock.url, health), environment=ENVIRONMENT)
    wait_until(lambda: provider_status(gateway, "primary") == "healthy", 5.0, "primary never reported healthy")
    assert served_by(gateway, primary_mock) == "primary"

    primary_mock.stop()
    wait_until(lambda: provider_status(gateway, "primary") == "unhealthy", 5.0, "primary never marked unhealthy")
    detailed = admin_request(gateway, "GET", "/health/detailed", ADMIN_TOKEN)
    assert detailed.status == 200
    body = detailed.json()
    assert body["status"] == "degraded"
    assert body["providers"]["primary"]["last_error"]
    assert body["providers"]["primary"]["last_probe_at_ms"] is not None
    assert body["providers"]["mock"]["status"] == "healthy"
    assert body["store"]["status"] == "ok"
    assert body["config_version"]
    assert served_by(gateway, primary_mock) == "mock"

    primary_mock.start()
    wait_until(lambda: provider_status(gateway, "primary") == "healthy", 5.0, "primary never recovered")
    assert served_by(gateway, primary_mock) == "primary"


def test_all_unhealthy_tries_preferred(gateway_factory) -> None:
    closed = f"http://127.0.0.1:{free_port()}/v1"
    health = {"enabled": True, "interval_ms": 200, "timeout_ms": 300, "unhealthy_after": 1, "healthy_after": 1}
    config = {
        "providers": {"primary": {"base_url": closed}},
        "models": {"gpt-4o-mini": {"provider": "primary"}},
        "health": health,
    }
    gateway = gateway_factory(config_overrides=config, environment=ENVIRONMENT)
    wait_until(lambda: provider_status(gateway, "primary") == "unhealthy", 5.0, "primary never marked unhealthy")
    detailed = admin_request(gateway, "GET", "/health/detailed", ADMIN_TOKEN)
    assert detailed.status == 200, "the mock provider is still healthy, so the gateway is degraded, not down"
    response = gateway.post("/chat/completions", BODY)
    assert response.status == 502
    assert response.json()["error"]["code"] == "upstream_connect_failed"


def test_retry_after_cools_provider(gateway_factory, primary_mock: MockUpstreamOnPort) -> None:
    gateway = gateway_factory(config_overrides=routed_config(primary_mock.url, failover={"statuses": []}), environment=ENVIRONMENT)
    limited = gateway.post("/chat/completions", BODY, {"x-mock-status": "429", "x-mock-retry-after": "2"})
    assert limited.status == 429
    cooled_at = time.monotonic()
    assert provider_status(gateway, "primary") == "cooling_down"
    assert served_by(gateway, primary_mock) == "mock"
    time.sleep(max(0.0, cooled_at + 1.5 - time.monotonic()))
    assert served_by(gateway, primary_mock) == "mock", "the cool-down must last about 2 s"
    time.sleep(max(0.0, cooled_at + 2.3 - time.monotonic()))
    assert served_by(gateway, primary_mock) == "primary"
    assert provider_status(gateway, "primary") == "healthy"


def test_connection_refused_fails_over(gateway_factory) -> None:
    closed = f"http://127.0.0.1:{free_port()}/v1"
    gateway = gateway_factory(config_overrides=routed_config(closed), environment=ENVIRONMENT)
    before = gateway.mock.request_count()
    raw = gateway.client().chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert raw.http_response.status_code == 200
    assert raw.parse().choices[0].message.content
    assert gateway.mock.request_count() == before + 1
    event = gateway.wait_for_event(raw.headers["x-watchllm-request-id"])
    assert event["provider"] == "mock"
    assert event["status"] == 200


def test_provider_by_host_name(gateway_factory, primary_mock: MockUpstreamOnPort) -> None:
    by_name = primary_mock.url.replace("127.0.0.1", "localhost")
    assert "localhost" in by_name
    gateway = gateway_factory(config_overrides=routed_config(by_name), environment=ENVIRONMENT)
    for _ in range(3):
        assert served_by(gateway, primary_mock) == "primary"


def dead_first_address_config(primary_mock: MockUpstreamOnPort) -> dict:
    """Return a config whose primary provider has the addresses 127.0.0.2, where the mock does not
    listen, and 127.0.0.1, where it does, and no fallback provider."""
    config = routed_config(primary_mock.url.replace("127.0.0.1", "provider.test"))
    config["providers"]["primary"]["addresses"] = ["127.0.0.2", "127.0.0.1"]
    config["models"]["gpt-4o-mini"]["fallbacks"] = []
    return config


def assert_address_skipped_once(gateway: Gateway, address: str) -> None:
    """Check that one request retried at another address and later requests skipped `address`."""
    log = gateway.stderr_text()
    assert log.count("retrying at another address") == 1, f"later requests must skip {address}"
    assert log.count("skipping a provider address") == 1
    assert address in log


def test_dead_address_skipped(gateway_factory, primary_mock: MockUpstreamOnPort) -> None:
    # Nothing listens on 127.0.0.2, so its connection is refused and the request tries 127.0.0.1.
    gateway = gateway_factory(config_overrides=dead_first_address_config(primary_mock), environment=ENVIRONMENT)
    for _ in range(4):
        assert served_by(gateway, primary_mock) == "primary"
    assert_address_skipped_once(gateway, "127.0.0.2")
    assert provider_status(gateway, "primary") == "healthy"


@contextlib.contextmanager
def silent_listener(host: str, port: int) -> Iterator[None]:
    """Listen on host:port with a full accept queue, so that Linux drops new connection attempts
    and a client's connect times out instead of being refused. Several fillers make sure that
    one connection fills the queue even when their handshakes race."""
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        listener.bind((host, port))
        listener.listen(0)
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            assert filler.connect_ex((host, port)) in (0, errno.EINPROGRESS)
            fillers.append(filler)
        try:
            socket.create_connection((host, port), timeout=0.3).close()
        except TimeoutError:
            pass
        else:
            pytest.fail(f"{host}:{port} still accepted a connection with its accept queue full")
        yield
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def test_timed_out_address_skipped(gateway_factory, primary_mock: MockUpstreamOnPort) -> None:
    port = urlsplit(primary_mock.url).port
    assert port is not None
    with silent_listener("127.0.0.2", port):
        config = dead_first_address_config(primary_mock)
        config["providers"]["primary"]["connect_timeout_ms"] = 300
        gateway = gateway_factory(config_overrides=config, environment=ENVIRONMENT)
        started = time.monotonic()
        assert served_by(gateway, primary_mock) == "primary"
        first = time.monotonic() - started
        for _ in range(3):
            assert served_by(gateway, primary_mock) == "primary"
    assert_address_skipped_once(gateway, "127.0.0.2")
    assert first >= 0.3, f"the first request should wait for the 0.3 s connect timeout, took {first:.2f} s"
    assert provider_status(gateway, "primary") == "healthy"


def test_probe_skips_dead_address(gateway_factory, primary_mock: MockUpstreamOnPort) -> None:
    health = {"enabled": True, "interval_ms": 200, "timeout_ms": 500, "unhealthy_after": 1, "healthy_after": 1}
    config = routed_config(primary_mock.url.replace("127.0.0.1", "provider.test"), health)
    config["providers"]["primary"]["addresses"] = ["127.0.0.2", "127.0.0.1"]
    gateway = gateway_factory(config_overrides=config, environment=ENVIRONMENT)
    wait_until(lambda: provider_status(gateway, "primary") == "healthy", 5.0, "primary never reported healthy")
    statuses = []
    for _ in range(6):
        time.sleep(0.2)
        statuses.append(provider_status(gateway, "primary"))
    assert statuses == ["healthy"] * 6
    assert gateway.stderr_text().count("skipping a provider address") == 1


def test_all_addresses_dead_fails_over(gateway_factory, primary_mock: MockUpstreamOnPort) -> None:
    config = routed_config(primary_mock.url.replace("127.0.0.1", "provider.test"))
    config["providers"]["primary"]["addresses"] = ["127.0.0.2", "127.0.0.3"]
    gateway = gateway_factory(config_overrides=config, environment=ENVIRONMENT)
    raw = gateway.client().chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert raw.http_response.status_code == 200
    event = gateway.wait_for_event(raw.headers["x-watchllm-request-id"])
    assert event["provider"] == "mock"
    log = gateway.stderr_text()
    assert log.count("retrying at another address") == 1
    assert log.count("trying the next provider") == 1
    assert primary_mock.request_count() == 0


def test_unresolvable_provider_fails_over(gateway_factory) -> None:
    # The .invalid top-level domain never resolves (RFC 6761).
    gateway = gateway_factory(config_overrides=routed_config("http://provider.invalid/v1"), environment=ENVIRONMENT)
    raw = gateway.client().chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert raw.http_response.status_code == 200
    event = gateway.wait_for_event(raw.headers["x-watchllm-request-id"])
    assert event["provider"] == "mock"
    assert "failed to resolve the provider's address" in gateway.stderr_text()


def test_unresolvable_provider_alone_is_502(gateway_factory) -> None:
    config = {
        "providers": {"primary": {"base_url": "http://provider.invalid/v1"}},
        "models": {"gpt-4o-mini": {"provider": "primary"}},
        "health": {"enabled": False},
    }
    gateway = gateway_factory(config_overrides=config, environment=ENVIRONMENT)
    for _ in range(2):
        response = gateway.post("/chat/completions", BODY)
        assert response.status == 502
        error = response.json()["error"]
        assert error["code"] == "upstream_connect_failed"
        assert error["type"] == "upstream_error"
    assert "panicked" not in gateway.stderr_text()
    models = gateway.client().models.list()
    assert "gpt-4o-mini" in [m.id for m in models.data]


def test_status_503_fails_over(gateway_factory) -> None:
    failing = FakeUpstream(503)
    try:
        gateway = gateway_factory(config_overrides=routed_config(failing.url), environment=ENVIRONMENT)
        before = gateway.mock.request_count()
        stream = gateway.client().chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "stream me"}], stream=True
        )
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        assert text
        assert failing.count() == 1
        assert gateway.mock.request_count() == before + 1
    finally:
        failing.close()


def test_body_read_then_dropped_not_retried(gateway_factory) -> None:
    dropping = FakeUpstream(None)
    try:
        gateway = gateway_factory(config_overrides=routed_config(dropping.url), environment=ENVIRONMENT)
        before = gateway.mock.request_count()
        response = gateway.post("/chat/completions", BODY)
        assert response.status == 502
        assert response.json()["error"]["code"] == "upstream_failed"
        assert dropping.count() == 1
        assert gateway.mock.request_count() == before, "the request must not be sent to a second provider"
        with pytest.raises(openai.APIStatusError) as raised:
            gateway.client().chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
        assert raised.value.status_code == 502
        assert dropping.count() == 2
        assert gateway.mock.request_count() == before
    finally:
        dropping.close()


def test_error_event_counts_as_failure(gateway_factory, primary_mock: MockUpstreamOnPort) -> None:
    health = {"enabled": False, "unhealthy_after": 2}
    gateway = gateway_factory(config_overrides=routed_config(primary_mock.url, health), environment=ENVIRONMENT)
    body = json.dumps({"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "x"}]}).encode()
    for _ in range(2):
        response = gateway.post("/chat/completions", body, {"x-mock-error-in-200": "1"})
        assert response.status == 200
    # The stream's first event is checked in the logging phase, which runs after the client has the
    # whole response, so the second failure lands a moment after the second request returns.
    wait_until(lambda: provider_status(gateway, "primary") == "unhealthy", 5, "primary was never marked unhealthy")
    assert served_by(gateway, primary_mock) == "mock"
