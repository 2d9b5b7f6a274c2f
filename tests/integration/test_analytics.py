"""Usage analytics end to end: the usage, savings and forecast APIs against the usage events, the
`rollup rebuild` command, the projected-spend gauge and the budget alert with its webhook."""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import math
import re
import secrets
import time

import pytest

from harness import (
    Gateway,
    WebhookReceiver,
    database_sql,
    http_request,
    seed_usage_events,
    usage_event_row,
    wait_until,
)

ADMIN_TOKEN = "analytics-admin-" + secrets.token_hex(12)
ENVIRONMENT = {"WATCHLLM_ADMIN_TOKEN": ADMIN_TOKEN}
DAY_MS = 86_400_000


def get(gateway: Gateway, path: str, token: str | None = ADMIN_TOKEN):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return http_request(gateway.admin_url + path, headers=headers)


def get_json(gateway: Gateway, path: str) -> dict:
    response = get(gateway, path)
    assert response.status == 200, (path, response.status, response.body[:500])
    return response.json()


def today_start_ms() -> int:
    now = datetime.datetime.now(datetime.timezone.utc)
    return int(datetime.datetime(now.year, now.month, now.day, tzinfo=datetime.timezone.utc).timestamp() * 1000)


def date_of(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).strftime("%Y-%m-%d")


def start(gateway_factory) -> Gateway:
    gateway = gateway_factory(environment=ENVIRONMENT)
    gateway.track(ADMIN_TOKEN)
    return gateway


def send_requests(gateway: Gateway, models: list[str]) -> list[dict]:
    client = gateway.client()
    for model in models:
        if model.startswith("text-embedding"):
            client.embeddings.create(model=model, input="analytics input")
        else:
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": "count these words please"}])
    return gateway.wait_for_events(len(models))


def test_usage_matches_events(gateway_factory) -> None:
    gateway = start(gateway_factory)
    events = send_requests(gateway, ["gpt-4o-mini", "gpt-4o-mini", "gpt-4o", "gpt-4o-mini", "text-embedding-3-small"])

    usage = get_json(gateway, f"/admin/projects/{gateway.project_id}/usage?granularity=hour&group_by=model")
    assert usage["totals"]["requests"] == len(events)
    assert math.isclose(usage["totals"]["cost_usd"], sum(e["cost_usd"] for e in events), rel_tol=1e-9)
    assert usage["totals"]["tokens"]["total"] == sum(e["total_tokens"] for e in events)
    assert sum(bucket["count"] for bucket in usage["totals"]["latency_histogram"]) == len(events)
    by_model = {group["group"]: group for group in usage["groups"]}
    for model in ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small"):
        expected = [e for e in events if e["model"] == model]
        assert by_model[model]["requests"] == len(expected), model
        assert by_model[model]["tokens"]["prompt"] == sum(e["prompt_tokens"] for e in expected), model
    assert sum(entry["requests"] for entry in usage["series"]) == len(events)

    # The project's name works like its id, and a day query sums the same events.
    by_name = get_json(gateway, f"/admin/projects/{Gateway.PROJECT_NAME}/usage")
    assert by_name["granularity"] == "day"
    assert by_name["totals"]["requests"] == len(events)


def test_analytics_rejects_bad_requests(gateway_factory) -> None:
    gateway = start(gateway_factory)
    base = f"/admin/projects/{gateway.project_id}"
    assert get(gateway, base + "/usage", token=None).status == 401
    assert get(gateway, base + "/forecast", token="wrong-token-0123456789").status == 401
    assert get(gateway, "/admin/projects/no-such-project/usage").json()["error"]["code"] == "project_not_found"
    for query in ("granularity=week", "group_by=key", "from=yesterday", "from=2026-02-01&to=2026-01-01",
                  "granularity=hour&from=2020-01-01&to=2026-01-01"):
        response = get(gateway, f"{base}/usage?{query}")
        assert response.status == 400, query
        assert response.json()["error"]["code"] == "invalid_parameter", query


def test_rebuild_recomputes_history(gateway_factory) -> None:
    gateway = start(gateway_factory)
    today = today_start_ms()
    first_day = today - 10 * DAY_MS
    rows = [usage_event_row(gateway, first_day + day * DAY_MS + 3_600_000 * (day % 5), cost_usd=0.5 + day / 100)
            for day in range(10) for _ in range(3)]
    seed_usage_events(gateway, rows)
    query = f"/admin/projects/{gateway.project_id}/usage?from={date_of(first_day)}&to={date_of(today - DAY_MS)}"

    # Rows written behind the gateway's back are not in the rollups until a rebuild.
    assert get_json(gateway, query)["totals"]["requests"] == 0
    rebuilt = gateway.cli("rollup", "rebuild", "--from", date_of(first_day), "--to", date_of(today - DAY_MS))
    assert '"events":30' in rebuilt.stdout.replace(" ", "")
    usage = get_json(gateway, query)
    assert usage["totals"]["requests"] == 30
    assert math.isclose(usage["totals"]["cost_usd"], sum(r["cost_usd"] for r in rows), rel_tol=1e-9)
    assert len(usage["series"]) == 10

    # A second rebuild, and one after the rollups were damaged, give the same sums.
    gateway.cli("rollup", "rebuild", "--from", date_of(first_day), "--to", date_of(today - DAY_MS))
    database_sql(gateway, "DELETE FROM usage_rollups_daily")
    gateway.cli("rollup", "rebuild", "--from", date_of(first_day), "--to", date_of(today))
    again = get_json(gateway, query)
    assert again["totals"] == usage["totals"]

    invalid = gateway.cli("rollup", "rebuild", "--from", "2026-13-01", "--to", "2026-12-01", check=False)
    assert invalid.returncode != 0
    assert "invalid --from" in invalid.stderr


def test_savings_by_cache_status(gateway_factory) -> None:
    gateway = start(gateway_factory)
    day = today_start_ms() - 2 * DAY_MS
    rows = (
        [usage_event_row(gateway, day + 1000, cost_usd=0.0, potential_cost_usd=0.2, cache_status="hit-exact") for _ in range(3)]
        + [usage_event_row(gateway, day + 2000, cost_usd=0.0, potential_cost_usd=0.1, cache_status="hit-semantic")]
        + [usage_event_row(gateway, day + 3000, cost_usd=0.3, cache_status="miss") for _ in range(4)]
        + [usage_event_row(gateway, day + 4000, cost_usd=0.05, cache_status="bypass")]
    )
    seed_usage_events(gateway, rows)
    gateway.cli("rollup", "rebuild", "--from", date_of(day), "--to", date_of(day))

    savings = get_json(gateway, f"/admin/projects/{gateway.project_id}/savings?from={date_of(day)}&to={date_of(day)}")
    assert savings["requests"] == 9
    assert savings["cache_hits"] == 4
    assert savings["cache_misses"] == 4
    assert savings["cache_hit_rate"] == 0.5
    assert math.isclose(savings["saved_usd"], 0.7, rel_tol=1e-9)
    assert math.isclose(savings["cost_usd"], 1.25, rel_tol=1e-9)
    assert savings["requests_by_cache_status"] == {"bypass": 1, "hit-exact": 3, "hit-semantic": 1, "miss": 4}


def test_forecast_gauge_and_budget_alert(gateway_factory) -> None:
    gateway = start(gateway_factory)
    today = today_start_ms()
    rows = [usage_event_row(gateway, today - day * DAY_MS + 7_200_000, cost_usd=2.0) for day in range(1, 22)]
    rows.append(usage_event_row(gateway, today + 60_000, cost_usd=1.0))
    seed_usage_events(gateway, rows)
    gateway.cli("rollup", "rebuild", "--from", date_of(today - 21 * DAY_MS), "--to", date_of(today))
    path = f"/admin/projects/{gateway.project_id}/forecast"

    forecast = get_json(gateway, path)
    month_start = today - (int(date_of(today)[8:]) - 1) * DAY_MS
    expected_so_far = sum(r["cost_usd"] for r in rows if r["created_at_ms"] >= month_start)
    assert math.isclose(forecast["spend_so_far_usd"], expected_so_far, rel_tol=1e-9)
    assert forecast["method"] == "holt_winters_weekly"
    assert forecast["history_days"] == 21
    assert forecast["interval"]["lower_usd"] <= forecast["projected_month_end_usd"] <= forecast["interval"]["upper_usd"]
    assert forecast["budget_usd"] is None
    assert forecast["projected_budget_exhaustion_date"] is None
    assert not forecast["projected_budget_exceeded"]
    assert forecast["daily"][-1]["date"] == date_of(today)
    assert len(forecast["daily"]) + len(forecast["forecast_daily"]) - 1 == int(forecast["forecast_daily"][-1]["date"][8:])

    metrics = get(gateway, "/metrics").body.decode()
    gauge = re.search(rf'watchllm_projected_spend_usd{{bound="projected",project="{gateway.project_id}"}} (\S+)', metrics)
    assert gauge, metrics[-2000:]
    assert math.isclose(float(gauge.group(1)), forecast["projected_month_end_usd"], rel_tol=1e-6)

    # A budget below the spend so far: the lower bound exceeds it, and the alert fires once.
    database_sql(gateway, "UPDATE plans SET monthly_cost_usd = 0.5 WHERE name = 'pro'")
    for _ in range(3):
        over = get_json(gateway, path)
        assert over["budget_usd"] == 0.5
        assert over["projected_budget_exceeded"]
        assert over["projected_budget_exhaustion_date"] is not None
    alerts = database_sql(gateway, "SELECT dedup_key, kind FROM analytics_alerts")
    assert len(alerts) == 1
    assert alerts[0][1] == "projected_budget_exceeded"
    assert alerts[0][0] == f"projected_budget_exceeded:{gateway.project_id}:{over['month']}"
    wait_until(lambda: "projected month-end spend exceeds the budget" in gateway.stderr_text(), 5.0, "alert log line")
    assert gateway.stderr_text().count("projected month-end spend exceeds the budget") == 1


def budget_alerts(receiver: WebhookReceiver) -> list[dict]:
    """Return the bodies of the `projected_budget_exceeded` webhooks that `receiver` received."""
    bodies = [json.loads(request["body"]) for request in receiver.received()]
    return [body for body in bodies if body["type"] == "projected_budget_exceeded"]


def test_budget_alert_sent_by_webhook(gateway_factory) -> None:
    secret = "budget-webhook-secret-" + secrets.token_hex(8)
    receiver = WebhookReceiver()
    try:
        overrides = {"alerts": {"webhook": {"url": receiver.url, "initial_backoff_ms": 100}}}
        gateway = gateway_factory(config_overrides=overrides, environment={**ENVIRONMENT, "WATCHLLM_WEBHOOK_SECRET": secret}, start=False)
        gateway.track(ADMIN_TOKEN, secret)
        thrifty = json.loads(gateway.cli("project", "create", "thrifty", "--plan", "enterprise").stdout)["id"]

        # Both projects spent 2 a day for three weeks, and 1 today.
        today = today_start_ms()
        rows = []
        for project_id in (gateway.project_id, thrifty):
            rows += [usage_event_row(gateway, today - day * DAY_MS + 7_200_000, cost_usd=2.0, project_id=project_id) for day in range(1, 22)]
            rows.append(usage_event_row(gateway, today + 60_000, cost_usd=1.0, project_id=project_id))
        seed_usage_events(gateway, rows)
        gateway.cli("rollup", "rebuild", "--from", date_of(today - 21 * DAY_MS), "--to", date_of(today))
        gateway.start()

        # The budget of the gateway's project (plan pro) lies below the forecast's lower bound,
        # and above the spend so far unless the month has no time left for that.
        spender_path = f"/admin/projects/{gateway.project_id}/forecast"
        thrifty_path = f"/admin/projects/{thrifty}/forecast"
        unbudgeted = get_json(gateway, spender_path)
        so_far, lower = unbudgeted["spend_so_far_usd"], unbudgeted["interval"]["lower_usd"]
        budget = round((so_far + lower) / 2, 4) if lower - so_far > 0.02 else round(so_far / 2, 4)
        database_sql(gateway, f"UPDATE plans SET monthly_cost_usd = {budget!r} WHERE name = 'pro'")
        database_sql(gateway, "UPDATE plans SET monthly_cost_usd = 1000000.0 WHERE name = 'enterprise'")

        for _ in range(3):
            spender = get_json(gateway, spender_path)
            assert spender["budget_usd"] == budget
            assert spender["projected_budget_exceeded"], spender
            under = get_json(gateway, thrifty_path)
            assert under["budget_usd"] == 1000000.0
            assert not under["projected_budget_exceeded"], under
        wait_until(lambda: budget_alerts(receiver), 10.0, "no projected_budget_exceeded webhook arrived")

        # A restart forecasts every project again; the stored alert keeps it from repeating.
        gateway.restart()
        get_json(gateway, spender_path)
        get_json(gateway, thrifty_path)
        time.sleep(1.5)

        alerts = budget_alerts(receiver)
        assert len(alerts) == 1, alerts
        alert = alerts[0]
        assert alert["project"] == {"id": gateway.project_id, "name": Gateway.PROJECT_NAME}
        assert alert["id"] == f"projected_budget_exceeded:{gateway.project_id}:{spender['month']}"
        assert alert["period"] == spender["month"]
        assert alert["time_zone"] == "UTC"
        assert alert["budget_usd"] == budget
        assert alert["interval"]["lower_usd"] > budget
        assert math.isclose(alert["spend_so_far_usd"], spender["spend_so_far_usd"], rel_tol=1e-9)
        assert alert["projected_budget_exhaustion_date"] is not None
        assert all(json.loads(r["body"])["project"]["id"] != thrifty for r in receiver.received())

        request = [r for r in receiver.received() if json.loads(r["body"])["type"] == "projected_budget_exceeded"][0]
        expected = "sha256=" + hmac.new(secret.encode(), request["body"], hashlib.sha256).hexdigest()
        assert hmac.compare_digest(request["headers"]["x-watchllm-signature"], expected)

        stored = database_sql(gateway, "SELECT project_id, delivered_at_ms FROM analytics_alerts")
        assert len(stored) == 1
        assert stored[0][0] == gateway.project_id
        assert stored[0][1] not in (None, "")
    finally:
        receiver.close()


@pytest.mark.parametrize("page", ["/dashboard", "/dashboard/app.js", "/dashboard/style.css"])
def test_dashboard_assets_served(gateway_factory, page: str) -> None:
    gateway = start(gateway_factory)
    response = get(gateway, page, token=None)
    assert response.status == 200
    assert "default-src 'none'" in response.headers["content-security-policy"]
    assert b"http://" not in response.body.replace(b"http://www.w3.org/2000/svg", b"")
    assert b"https://" not in response.body


def test_budget_from_limits_config(gateway_factory) -> None:
    overrides = {"limits": {"projects": {Gateway.PROJECT_NAME: {"monthly_cost_usd": 1000.0}}}}
    gateway = gateway_factory(config_overrides=overrides, environment=ENVIRONMENT)
    gateway.track(ADMIN_TOKEN)
    forecast = get_json(gateway, f"/admin/projects/{gateway.project_id}/forecast")
    assert forecast["budget_usd"] == 1000.0
    assert not forecast["projected_budget_exceeded"]
    assert forecast["projected_budget_exhaustion_date"] is None
