"""Start-up and health of the gateway process."""

from __future__ import annotations

import contextlib
import http.client
import time

from harness import HttpResponse, http_request, wait_until


def health(admin_url: str) -> HttpResponse | None:
    with contextlib.suppress(OSError, http.client.HTTPException):
        return http_request(admin_url + "/health", timeout=2.0)
    return None


def test_health_reports_ok(gateway) -> None:
    response = http_request(gateway.admin_url + "/health")

    assert response.status == 200
    assert response.json()["status"] == "ok"


def test_health_means_ready(gateway_factory) -> None:
    gateway = gateway_factory(start=False)
    gateway.spawn()

    def health_ok() -> bool:
        response = health(gateway.admin_url)
        return response is not None and response.status == 200

    # Poll often, so that the first ok arrives as soon as the admin listener serves it.
    wait_until(health_ok, 30.0, "GET /health never returned 200", interval=0.005)
    ok_at = time.monotonic()
    refused_after_ms = None
    try:
        models = http_request(gateway.base_url + "/models", headers={"Authorization": f"Bearer {gateway.key}"})
    except ConnectionRefusedError:
        models = None
        refused_after_ms = (time.monotonic() - ok_at) * 1000

    assert models is not None, (
        f"GET /health returned ok, but the proxy port refused a connection {refused_after_ms:.1f} ms later"
    )
    assert models.status == 200
