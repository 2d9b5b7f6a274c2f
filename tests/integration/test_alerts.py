"""Usage alerts: one signed webhook per project, month, limit and threshold, retried with
backoff and recorded attempt by attempt, and the optional email through SMTP."""

from __future__ import annotations

import email
import hashlib
import hmac
import json
import threading
import time
from typing import Any

from harness import Gateway, SmtpSink, WebhookReceiver, admin_get, wait_until

ADMIN_TOKEN = "alerts-admin-token-0123456789"
SECRET = "webhook-signing-secret-for-tests"
ENVIRONMENT = {"WATCHLLM_ADMIN_TOKEN": ADMIN_TOKEN, "WATCHLLM_WEBHOOK_SECRET": SECRET}
CHAT = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode()


def overrides(receiver: WebhookReceiver | None, monthly_requests: int = 10, thresholds: list[float] | None = None, **webhook: Any) -> dict[str, Any]:
    config: dict[str, Any] = {"limits": {"plans": {"pro": {"monthly_requests": monthly_requests}}}}
    if receiver is not None:
        config["alerts"] = {"webhook": {"url": receiver.url, "initial_backoff_ms": 100, **webhook}}
        if thresholds is not None:
            config["alerts"]["thresholds"] = thresholds
    return config


def alerts_of(gateway: Gateway) -> list[dict[str, Any]]:
    response = admin_get(gateway, f"/admin/projects/{gateway.PROJECT_NAME}/alerts", ADMIN_TOKEN)
    assert response.status == 200, response.body
    return response.json()["alerts"]


def send_concurrently(gateway: Gateway, count: int) -> list[int]:
    statuses: list[int] = []
    threads = [threading.Thread(target=lambda: statuses.append(gateway.post("/chat/completions", CHAT).status)) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return statuses


def verify_signature(request: dict[str, Any]) -> None:
    expected = "sha256=" + hmac.new(SECRET.encode(), request["body"], hashlib.sha256).hexdigest()
    assert hmac.compare_digest(request["headers"]["x-watchllm-signature"], expected)


def test_crossing_80_percent_sends_one_signed_webhook(gateway_factory) -> None:
    receiver = WebhookReceiver()
    try:
        gateway = gateway_factory(overrides(receiver), environment=ENVIRONMENT)
        assert send_concurrently(gateway, 9) == [200] * 9
        wait_until(lambda: len(receiver.received()) >= 1, 10.0, "no webhook arrived")

        # A restart rebuilds the counters above 80%; the stored alert keeps it from repeating.
        gateway.wait_for_events(9)
        gateway.restart()
        time.sleep(1.5)
        received = receiver.received()
        assert len(received) == 1, [r["body"] for r in received]
        verify_signature(received[0])
        payload = json.loads(received[0]["body"])
        assert payload["project"] == {"id": gateway.project_id, "name": gateway.PROJECT_NAME}
        assert payload["limit"] == "monthly_requests"
        assert payload["threshold"] == 0.8
        assert payload["limit_value"] == 10
        assert payload["used"] >= 8
        assert payload["period"] == time.strftime("%Y-%m", time.gmtime())

        alerts = alerts_of(gateway)
        assert len(alerts) == 1
        assert alerts[0]["webhook_status"] == "delivered"
        assert alerts[0]["email_status"] == "disabled"
        assert [a["ok"] for a in alerts[0]["deliveries"]] == [True]

        # Reaching 100% is the next threshold, sent once too.
        assert gateway.post("/chat/completions", CHAT).status == 200
        wait_until(lambda: len(receiver.received()) == 2, 10.0, "no webhook for 100%")
        assert json.loads(receiver.received()[1]["body"])["threshold"] == 1.0
    finally:
        receiver.close()


def test_failing_receiver_retried_and_recorded(gateway_factory) -> None:
    receiver = WebhookReceiver(failures=2)
    try:
        gateway = gateway_factory(overrides(receiver, monthly_requests=1, thresholds=[0.8], max_attempts=5, initial_backoff_ms=300), environment=ENVIRONMENT)
        assert gateway.post("/chat/completions", CHAT).status == 200

        def delivered() -> list[dict[str, Any]] | None:
            alerts = [a for a in alerts_of(gateway) if a["threshold"] == 0.8]
            return alerts if alerts and alerts[0]["webhook_status"] == "delivered" else None

        alert = wait_until(delivered, 15.0, "the webhook was not delivered after retries")[0]
        attempts = [d for d in alert["deliveries"] if d["channel"] == "webhook"]
        assert [d["attempt"] for d in attempts] == [1, 2, 3]
        assert [d["ok"] for d in attempts] == [False, False, True]
        assert [d["status_code"] for d in attempts] == [500, 500, 200]
        # Exponential backoff: 300 ms, then 600 ms. Each gap also contains an attempt and its record,
        # which a loaded host can stretch, so only the lower bounds are certain. A constant 300 ms
        # would leave the second gap far below 600 ms.
        gaps = [later["at_ms"] - earlier["at_ms"] for earlier, later in zip(attempts, attempts[1:])]
        assert gaps[0] >= 300 - 5, gaps
        assert gaps[1] >= 600 - 5, gaps
        assert len([r for r in receiver.received() if json.loads(r["body"])["threshold"] == 0.8]) == 3
    finally:
        receiver.close()


def test_receiver_down_marks_alert_failed(gateway_factory) -> None:
    receiver = WebhookReceiver(failures=1000)
    try:
        gateway = gateway_factory(overrides(receiver, monthly_requests=1, max_attempts=3), environment=ENVIRONMENT)
        assert gateway.post("/chat/completions", CHAT).status == 200

        def failed() -> list[dict[str, Any]] | None:
            alerts = alerts_of(gateway)
            return alerts if len(alerts) == 2 and all(a["webhook_status"] == "failed" for a in alerts) else None

        for alert in wait_until(failed, 15.0, "the alerts were not marked failed"):
            assert [d["ok"] for d in alert["deliveries"]] == [False, False, False]
    finally:
        receiver.close()


def test_shutdown_waits_for_delivery(gateway_factory) -> None:
    # The receiver responds 1.5 s after it records the webhook, and SIGTERM arrives in between.
    receiver = WebhookReceiver(delay_s=1.5)
    try:
        gateway = gateway_factory(overrides(receiver, monthly_requests=1, thresholds=[0.8]), environment=ENVIRONMENT)
        assert gateway.post("/chat/completions", CHAT).status == 200
        wait_until(lambda: receiver.received(), 10.0, "no webhook arrived")
        started = time.monotonic()
        assert gateway.stop() == 0
        assert time.monotonic() - started >= 0.5, "the gateway exited before the receiver responded"
        assert "alerts still being delivered are cut" not in gateway.stderr_text()

        # The delivery was recorded before the exit, so the restarted gateway does not send it again.
        gateway.start()
        alerts = alerts_of(gateway)
        assert len(alerts) == 1
        assert alerts[0]["webhook_status"] == "delivered"
        assert [d["ok"] for d in alerts[0]["deliveries"]] == [True]
        time.sleep(1.0)
        assert len(receiver.received()) == 1
    finally:
        receiver.close()


def test_email_through_smtp_sink(gateway_factory) -> None:
    sink = SmtpSink()
    try:
        config = overrides(None, monthly_requests=10)
        config["alerts"] = {
            "thresholds": [0.5],
            "email": {"smtp_host": "127.0.0.1", "smtp_port": sink.port, "tls": "none", "from": "watchllm@example.test", "to": ["ops@example.test"], "initial_backoff_ms": 100},
        }
        gateway = gateway_factory(config, environment=ENVIRONMENT)
        assert send_concurrently(gateway, 5) == [200] * 5
        wait_until(lambda: sink.received(), 10.0, "no email arrived")
        time.sleep(0.5)
        messages = sink.received()
        assert len(messages) == 1
        assert "ops@example.test" in messages[0]["to"][0]
        message = email.message_from_string(messages[0]["data"])
        assert message["Subject"] == "WatchLLM: project integration reached 50% of monthly_requests"
        assert message["From"] == "watchllm@example.test"
        text = message.get_payload(decode=True).decode()
        assert f"Project integration ({gateway.project_id}) used 5 of its monthly_requests limit of 10" in text

        def delivered() -> bool:
            alerts = alerts_of(gateway)
            return len(alerts) == 1 and alerts[0]["email_status"] == "delivered" and alerts[0]["webhook_status"] == "disabled"

        wait_until(delivered, 10.0, "the email delivery was not recorded")
    finally:
        sink.close()


def test_alerts_endpoint_needs_admin_token(gateway_factory) -> None:
    gateway = gateway_factory(environment=ENVIRONMENT)
    response = admin_get(gateway, f"/admin/projects/{gateway.project_id}/alerts", "wrong-token-0123456789")
    assert response.status == 401
    missing = admin_get(gateway, "/admin/projects/no-such-project/alerts", ADMIN_TOKEN)
    assert missing.status == 404
