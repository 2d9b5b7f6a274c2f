"""Operations: metrics, readiness, the admin token, live reload, and the systemd unit."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import openai
import pytest
import yaml

from harness import REPO_ROOT, Gateway, http_request, unique_text, wait_until

ADMIN_TOKEN = "integration-admin-token-0123456789"
ADMIN_ENV = {"WATCHLLM_ADMIN_TOKEN": ADMIN_TOKEN}
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def metrics_text(gateway: Gateway) -> str:
    response = http_request(gateway.admin_url + "/metrics", headers=AUTH)
    assert response.status == 200, response.body
    return response.body.decode()


def metric(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """Return the value of one series, or 0 when the series is absent."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        series, _, value = line.rpartition(" ")
        series_name, _, label_text = series.partition("{")
        if series_name != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', label_text))
        if all(found.get(key) == wanted for key, wanted in (labels or {}).items()):
            return float(value)
    return 0.0


def config_version(gateway: Gateway) -> str:
    return http_request(gateway.admin_url + "/health").json()["config_version"]


def chat(gateway: Gateway, model: str = "gpt-4o-mini", **options):
    prompt = unique_text("Operations check")
    gateway.track(prompt)
    return gateway.client().chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}], **options)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_admin_token_guards_endpoints(gateway_factory) -> None:
    gateway = gateway_factory(environment=ADMIN_ENV)

    assert http_request(gateway.admin_url + "/health").status == 200
    for path in ("/metrics", "/health/ready"):
        missing = http_request(gateway.admin_url + path)
        wrong = http_request(gateway.admin_url + path, headers={"Authorization": "Bearer wrong-token-0000000000"})
        assert missing.status == 401, path
        assert missing.json()["error"]["code"] == "invalid_admin_token"
        assert wrong.status == 401, path
        assert http_request(gateway.admin_url + path, headers=AUTH).status == 200, path


@pytest.mark.parametrize("backend", ["sqlite"])
def test_admin_without_token_closed(gateway_factory) -> None:
    gateway = gateway_factory()

    response = http_request(gateway.admin_url + "/metrics", headers=AUTH)

    assert response.status == 403
    assert response.json()["error"]["code"] == "admin_token_not_configured"


@pytest.mark.parametrize("backend", ["sqlite"])
def test_public_metrics_option(gateway_factory) -> None:
    gateway = gateway_factory(config_overrides={"admin": {"public_metrics": True}})

    assert http_request(gateway.admin_url + "/metrics").status == 200
    assert http_request(gateway.admin_url + "/health/ready").status == 403


def test_ready_reports_checks(gateway_factory) -> None:
    gateway = gateway_factory(environment=ADMIN_ENV)

    response = http_request(gateway.admin_url + "/health/ready", headers=AUTH)
    body = response.json()

    assert response.status == 200
    assert body["status"] == "ready"
    assert body["checks"]["store"] == "ok"
    assert body["checks"]["proxy"] == "listening"
    assert body["checks"]["journal"]["status"] == "ok"


@pytest.mark.parametrize("backend", ["sqlite"])
def test_ready_fails_when_journal_over_limit(gateway_factory) -> None:
    gateway = gateway_factory(environment=ADMIN_ENV, config_overrides={"accounting": {"journal_max_bytes": 1}})

    with gateway.database_unavailable():
        chat(gateway)
        wait_until(lambda: gateway.journal_event_ids(), 20.0, "the event never reached the journal")
        response = http_request(gateway.admin_url + "/health/ready", headers=AUTH)
        assert response.status == 503
        assert response.json()["checks"]["journal"]["status"] == "over_limit"

    wait_until(
        lambda: http_request(gateway.admin_url + "/health/ready", headers=AUTH).status == 200,
        20.0,
        "readiness did not recover after the journal was replayed",
    )


@pytest.mark.parametrize("backend", ["sqlite"])
def test_metrics_follow_request_mix(gateway_factory) -> None:
    gateway = gateway_factory(environment=ADMIN_ENV)
    before = metrics_text(gateway)

    replies = [chat(gateway) for _ in range(3)]
    with pytest.raises(openai.NotFoundError):
        chat(gateway, model="no-such-model")
    with pytest.raises(openai.InternalServerError):
        chat(gateway, extra_headers={"x-mock-status": "503"})
    gateway.client().embeddings.create(model="text-embedding-3-small", input="count me")
    events = gateway.wait_for_events(6)

    after = metrics_text(gateway)

    def grew(name: str, labels: dict[str, str]) -> float:
        return metric(after, name, labels) - metric(before, name, labels)

    chat_ok = {"endpoint": "chat.completions", "model": "gpt-4o-mini", "provider": "mock", "status": "2xx"}
    assert grew("watchllm_requests_total", chat_ok) == 3
    assert grew("watchllm_requests_total", {**chat_ok, "status": "5xx"}) == 1
    assert grew("watchllm_requests_total", {"endpoint": "chat.completions", "model": "", "status": "4xx"}) == 1
    assert grew("watchllm_requests_total", {"endpoint": "embeddings", "status": "2xx"}) == 1
    assert grew("watchllm_request_duration_seconds_count", {"endpoint": "chat.completions", "status": "2xx"}) == 3

    chat_events = [e for e in events if e["model"] == "gpt-4o-mini" and e["status"] == 200]
    assert len(chat_events) == 3
    expected_prompt = sum(reply.usage.prompt_tokens for reply in replies)
    expected_completion = sum(reply.usage.completion_tokens for reply in replies)
    assert grew("watchllm_tokens_total", {"kind": "prompt", "model": "gpt-4o-mini"}) == expected_prompt
    assert grew("watchllm_tokens_total", {"kind": "completion", "model": "gpt-4o-mini"}) == expected_completion
    expected_cost = sum(e["cost_usd"] for e in events if e["model"] == "gpt-4o-mini")
    assert grew("watchllm_cost_usd_total", {"model": "gpt-4o-mini"}) == pytest.approx(expected_cost, rel=1e-9)
    wait_until(
        lambda: metric(metrics_text(gateway), "watchllm_usage_events_total", {"outcome": "written"}) >= 6,
        10.0,
        "written usage events were not counted",
    )


def update_config(gateway: Gateway, change) -> None:
    config = yaml.safe_load(gateway.config_path.read_text())
    change(config)
    gateway.config_path.write_text(yaml.safe_dump(config, sort_keys=False))


@pytest.mark.parametrize("backend", ["sqlite"])
def test_reload_under_traffic(gateway_factory) -> None:
    gateway = gateway_factory(environment=ADMIN_ENV, config_overrides={"reload": {"watch_interval_ms": 0}})
    version_before = config_version(gateway)
    outcomes: dict[str, object] = {}
    stop = threading.Event()

    def long_stream() -> None:
        # 10 chunks 500 ms apart: a stream of about 5 seconds that spans the reload.
        prompt = unique_text("A long stream across a reload")
        gateway.track(prompt)
        stream = gateway.client(timeout=30.0).chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": prompt}],
            stream=True,
            extra_headers={"x-mock-chunks": "10", "x-mock-chunk-delay-ms": "500"},
        )
        chunks = list(stream)
        outcomes["finish_reason"] = chunks[-1].choices[0].finish_reason

    def steady_traffic() -> None:
        sent = failed = 0
        deadline = time.monotonic() + 20
        while not stop.is_set() and time.monotonic() < deadline and sent < 2000:
            try:
                chat(gateway)
            except openai.APIError as error:
                failed += 1
                outcomes.setdefault("first_error", repr(error))
            sent += 1
        outcomes["sent"], outcomes["failed"] = sent, failed

    streamer = threading.Thread(target=long_stream)
    traffic = threading.Thread(target=steady_traffic)
    streamer.start()
    traffic.start()
    time.sleep(1.5)

    # Add a model and raise a price, then reload with SIGHUP while the stream is in flight.
    update_config(gateway, lambda c: c["models"].update({"openrouter/llama-3.1-8b": {"provider": "mock"}}))
    pricing_path = gateway.config_dir / "pricing.yaml"
    pricing = yaml.safe_load(pricing_path.read_text())
    pricing["models"]["gpt-4o"]["input"] = 100.0
    pricing_path.write_text(yaml.safe_dump(pricing))
    gateway.process.send_signal(signal.SIGHUP)
    wait_until(lambda: config_version(gateway) != version_before, 10.0, "the config was not reloaded")

    streamer.join(timeout=30)
    stop.set()
    traffic.join(timeout=30)

    assert outcomes.get("finish_reason") == "stop", outcomes
    assert outcomes["failed"] == 0, outcomes
    assert outcomes["sent"] > 0
    assert metric(metrics_text(gateway), "watchllm_config_reloads_total", {"result": "success"}) >= 2

    added = chat(gateway, model="openrouter/llama-3.1-8b")
    priced = chat(gateway, model="gpt-4o")
    events = {e["id"]: e for e in gateway.wait_for_events(outcomes["sent"] + 3, timeout=20.0)}
    assert added.choices[0].message.content.startswith("Mock reply to:")
    priced_event = next(e for e in events.values() if e["model"] == "gpt-4o")
    expected = (priced.usage.prompt_tokens * 100.0 + priced.usage.completion_tokens * 10.0) / 1e6
    assert priced_event["cost_usd"] == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_invalid_reload_keeps_config(gateway_factory) -> None:
    gateway = gateway_factory(environment=ADMIN_ENV)
    version_before = config_version(gateway)
    failures_before = metric(metrics_text(gateway), "watchllm_config_reloads_total", {"result": "failure"})

    # A file change, not a signal: the watcher notices it and rejects the broken YAML.
    gateway.config_path.write_text(gateway.config_path.read_text() + "\nmodels: [unclosed\n")
    wait_until(
        lambda: metric(metrics_text(gateway), "watchllm_config_reloads_total", {"result": "failure"}) > failures_before,
        10.0,
        "the invalid reload was not counted",
    )

    assert config_version(gateway) == version_before
    assert chat(gateway).choices[0].message.content.startswith("Mock reply to:")
    assert "config reload rejected" in gateway.stderr_text()


def test_systemd_unit_verifies(tmp_path: Path, watchllm_binary: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    unit = (REPO_ROOT / "systemd" / "watchllm.service").read_text()
    # verify checks that the commands exist, so it points at the binary under test.
    (tmp_path / "watchllm.service").write_text(unit.replace("/usr/local/bin/watchllm", str(watchllm_binary)))

    result = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "watchllm.service")], capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr
    for setting in ("DynamicUser=yes", "ProtectSystem=strict", "NoNewPrivileges=yes", "PrivateTmp=yes", "CapabilityBoundingSet=\n"):
        assert setting in unit, setting
    assert "ExecReload=/bin/kill -HUP $MAINPID" in unit


def thread_nice_values(pid: int) -> dict[str, list[int]]:
    """Return the nice value of each of the process's threads, by thread name."""
    values: dict[str, list[int]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            # Field 19 of stat is the nice value. The name in field 2 may contain spaces, so the
            # fields are split after its closing parenthesis.
            fields = (task / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue  # the thread ended meanwhile
        values.setdefault(name, []).append(int(fields[16]))
    return values


@pytest.mark.parametrize("writer_nice", [5, 0])
def test_writer_thread_lower_priority(gateway_factory, writer_nice: int) -> None:
    gateway = gateway_factory(config_overrides={"accounting": {"writer_nice": writer_nice}}, environment=ADMIN_ENV)
    assert gateway.process is not None
    base = wait_until(lambda: thread_nice_values(gateway.process.pid).get("watchllm proxy"), 5.0, "no proxy thread")[0]
    expected = {min(base + writer_nice, 19)}
    # The accounting service sets its priority as it starts, which may follow the first /health.
    # Blocking threads of its runtime share the name and inherit the value.
    wait_until(lambda: set(thread_nice_values(gateway.process.pid).get("BG accounting", [])) == expected, 5.0, f"the accounting thread's nice value is not {expected}")
    assert all(nice == base for nice in thread_nice_values(gateway.process.pid)["watchllm proxy"])
    # Usage is still written from that thread.
    chat(gateway)
    gateway.wait_for_events(1)
