"""A/B experiments: sticky weighted variants, forced variants, and the experiment report."""

from __future__ import annotations

import json
import secrets

from harness import Gateway, admin_request, wait_until

ADMIN_TOKEN = "admin-token-" + secrets.token_hex(12)

CONFIG = {
    "health": {"enabled": False},
    "experiments": {
        "split": {
            "model": "gpt-4o",
            "user_header": "x-end-user",
            "variants": [
                {"name": "control", "model": "gpt-4o", "weight": 1},
                {"name": "mini", "model": "gpt-4o-mini", "weight": 1, "parameters": {"temperature": 0.25}},
                {"name": "off", "model": "gpt-4o-mini", "weight": 0},
            ],
        }
    },
}


def ask(gateway: Gateway, user: str | None = None, headers: dict[str, str] | None = None):
    """Send one chat request for gpt-4o and return the raw SDK response."""
    options = {"extra_headers": headers} if headers else {}
    if user is not None:
        options["user"] = user
    return gateway.client().chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "compare me"}], **options
    )


def test_variants_split_and_stick(gateway_factory) -> None:
    gateway = gateway_factory(config_overrides=CONFIG, environment={"WATCHLLM_ADMIN_TOKEN": ADMIN_TOKEN})
    assigned: dict[str, str] = {}
    for number in range(40):
        user = f"user-{number}"
        raw = ask(gateway, user)
        variant = raw.headers["x-watchllm-variant"]
        assigned[user] = variant
        sent = json.loads(gateway.mock.last_request()["body"])
        if variant == "mini":
            assert sent["model"] == "gpt-4o-mini"
            assert sent["temperature"] == 0.25
        else:
            assert sent["model"] == "gpt-4o"
            assert "temperature" not in sent
    counts = {name: list(assigned.values()).count(name) for name in ("control", "mini", "off")}
    assert counts["off"] == 0, counts
    assert counts["control"] >= 5, counts
    assert counts["mini"] >= 5, counts

    # One user keeps one variant, also when named by the configured header instead of the body.
    for user in list(assigned)[:5]:
        for _ in range(3):
            assert ask(gateway, user).headers["x-watchllm-variant"] == assigned[user]
        assert ask(gateway, headers={"x-end-user": user}).headers["x-watchllm-variant"] == assigned[user]

    # The response names the requested model; the client never sees the switch.
    raw = ask(gateway, "user-0")
    assert raw.parse().model in ("gpt-4o", "gpt-4o-mini")


def test_forced_variant_and_events(gateway_factory) -> None:
    gateway = gateway_factory(config_overrides=CONFIG, environment={"WATCHLLM_ADMIN_TOKEN": ADMIN_TOKEN})
    raw = ask(gateway, "someone", {"x-watchllm-variant": "off"})
    assert raw.headers["x-watchllm-variant"] == "off"
    event = gateway.wait_for_event(raw.headers["x-watchllm-request-id"])
    assert event["variant"] == "off"
    assert event["model"] == "gpt-4o"
    assert event["upstream_model"] == "gpt-4o-mini"

    body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}).encode()
    unknown = gateway.post("/chat/completions", body, {"x-watchllm-variant": "nope"})
    assert unknown.status == 400
    assert "nope" in unknown.json()["error"]["message"]

    # A model without an experiment has no variant.
    plain = gateway.client().chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    assert "x-watchllm-variant" not in plain.headers


def test_experiment_report(gateway_factory) -> None:
    gateway = gateway_factory(config_overrides=CONFIG, environment={"WATCHLLM_ADMIN_TOKEN": ADMIN_TOKEN})
    sent = {"control": 0, "mini": 0}
    for number in range(12):
        variant = "control" if number % 2 == 0 else "mini"
        ask(gateway, f"report-{number}", {"x-watchllm-variant": variant})
        sent[variant] += 1
    failing = gateway.client().chat.completions.with_raw_response
    try:
        failing.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}], extra_headers={"x-watchllm-variant": "mini", "x-mock-status": "500"})
    except Exception:  # noqa: BLE001 - the SDK raises for the 500 this request asks for
        pass
    gateway.wait_for_events(13)

    def report() -> dict | None:
        response = admin_request(gateway, "GET", "/admin/experiments/split", ADMIN_TOKEN)
        assert response.status == 200, response.body
        body = response.json()
        return body if body["requests"] >= 13 else None

    body = wait_until(report, 10.0, "the report never counted 13 requests", interval=0.2)
    variants = {entry["name"]: entry for entry in body["variants"]}
    assert variants["control"]["requests"] == sent["control"]
    assert variants["mini"]["requests"] == sent["mini"] + 1
    assert variants["off"]["requests"] == 0
    assert variants["control"]["error_rate"] == 0
    assert 0 < variants["mini"]["error_rate"] < 1
    for field in ("latency_ms", "ttft_ms", "tokens_per_request", "cost_per_request_usd", "cache_hit_rate"):
        assert field in variants["control"], field
    assert variants["control"]["latency_ms"]["p50"] is not None
    assert variants["control"]["latency_ms"]["p95"] >= variants["control"]["latency_ms"]["p50"]
    comparison = next(c for c in body["comparisons"] if c["variant"] == "mini")
    assert comparison["control"] == "control"
    for test in ("cost_per_request", "latency", "error_rate"):
        assert "p_value" in comparison[test], test
        assert "significant" in comparison[test], test
    assert comparison["cost_per_request"]["p_value"] is not None

    missing = admin_request(gateway, "GET", "/admin/experiments/none", ADMIN_TOKEN)
    assert missing.status == 404
