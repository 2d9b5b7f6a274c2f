"""The dashboard page in headless Chromium: it loads from a gateway with a seeded database, draws
its charts, and shows the numbers that the admin API returns.

Chromium comes from Debian's `chromium` package (scripts/setup.sh installs it). It runs with a
fresh profile, without background networking, and with every host name except 127.0.0.1
unresolvable, so the page can reach nothing but the gateway.
"""

from __future__ import annotations

import html.parser
import math
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from harness import Gateway, LOOPBACK, seed_usage_events, usage_event_row
from test_analytics import ADMIN_TOKEN, DAY_MS, date_of, get_json, start, today_start_ms

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_TIMEOUT_S = 90

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed; scripts/setup.sh installs it")


class Element:
    def __init__(self, tag: str, attributes: dict[str, str], parent: "Element | None"):
        self.tag = tag
        self.attributes = attributes
        self.parent = parent
        self.children: list[Element] = []
        self.text = ""

    def classes(self) -> list[str]:
        return self.attributes.get("class", "").split()

    def walk(self):
        yield self
        for child in self.children:
            yield from child.walk()

    def find_all(self, tag: str | None = None, **attributes: str) -> list["Element"]:
        return [
            element for element in self.walk()
            if (tag is None or element.tag == tag)
            and all(element.attributes.get(name.replace("_", "-")) == value for name, value in attributes.items())
        ]

    def all_text(self) -> str:
        return self.text + "".join(child.all_text() for child in self.children)


class DomParser(html.parser.HTMLParser):
    """Builds a small element tree of the DOM that Chromium dumped."""

    VOID = {"meta", "link", "input", "br", "img", "hr", "source", "col", "wbr"}

    def __init__(self) -> None:
        super().__init__()
        self.root = Element("#document", {}, None)
        self.current = self.root

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {name: value or "" for name, value in attrs}, self.current)
        self.current.children.append(element)
        if tag not in self.VOID:
            self.current = element

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.current.children.append(Element(tag, {name: value or "" for name, value in attrs}, self.current))

    def handle_endtag(self, tag: str) -> None:
        element = self.current
        while element.parent is not None and element.tag != tag:
            element = element.parent
        if element.parent is not None:
            self.current = element.parent

    def handle_data(self, data: str) -> None:
        self.current.text += data


def chromium(url: str, profile: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium on a loopback URL with a fresh profile and no other network."""
    assert url.startswith(f"http://{LOOPBACK}:"), url
    assert CHROMIUM is not None
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--no-default-browser-check",
        "--disable-extensions", "--disable-default-apps", f"--user-data-dir={profile}",
        f"--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE {LOOPBACK}",
        "--virtual-time-budget=15000", *arguments, url,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S)


def seed_month(gateway: Gateway) -> None:
    """Seed 28 days of history and today: two models, A/B variants and cache statuses."""
    today = today_start_ms()
    rows: list[dict[str, Any]] = []
    for day in range(28, -1, -1):
        start_ms = today - day * DAY_MS + (1000 if day == 0 else 3_600_000)
        weekend = ((today - day * DAY_MS) // DAY_MS + 3) % 7 >= 5
        for n in range(3 if weekend else 6):
            model = "gpt-4o" if n % 3 == 0 else "gpt-4o-mini"
            cost = 0.4 if model == "gpt-4o" else 0.1
            status = ["miss", "hit-exact", "miss", "hit-semantic", "none", "miss"][n]
            paid = 0.0 if status.startswith("hit") else cost
            rows.append(usage_event_row(gateway, start_ms + n, model=model, cost_usd=paid, potential_cost_usd=cost,
                                        cache_status=status, variant="a" if n % 2 else "b", latency_ms=300 + 100 * n))
    seed_usage_events(gateway, rows)
    gateway.cli("rollup", "rebuild", "--from", date_of(today - 28 * DAY_MS), "--to", date_of(today))


def number(text: str) -> float:
    return float(text.replace("$", "").replace(",", "").replace("%", ""))


def test_dashboard_draws_api_numbers(gateway_factory, tmp_path: Path) -> None:
    gateway = start(gateway_factory)
    seed_month(gateway)
    page = f"{gateway.admin_url}/dashboard?project={Gateway.PROJECT_NAME}#token={ADMIN_TOKEN}"

    dumped = chromium(page, tmp_path / "profile", "--dump-dom")
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    parser = DomParser()
    parser.feed(dumped.stdout)
    dom = parser.root
    body = dom.find_all("body")[0]
    assert "data-error" not in body.attributes, body.attributes.get("data-error")
    assert body.attributes.get("data-loaded") == gateway.project_id, dumped.stdout[:3000]

    base = f"/admin/projects/{gateway.project_id}"
    forecast = get_json(gateway, base + "/forecast")
    savings = get_json(gateway, base + "/savings")
    usage = get_json(gateway, base + "/usage?granularity=day")
    models = get_json(gateway, base + "/usage?granularity=day&group_by=model")

    def shown(element_id: str) -> Element:
        found = dom.find_all(id=element_id)
        assert len(found) == 1, element_id
        return found[0]

    for element_id, expected, relative in [
        ("spend-so-far", forecast["spend_so_far_usd"], 1e-9),
        ("projected", forecast["projected_month_end_usd"], 1e-3),
        ("saved", savings["saved_usd"], 1e-9),
        ("hit-rate", savings["cache_hit_rate"], 1e-9),
        ("requests", usage["totals"]["requests"], 0),
    ]:
        element = shown(element_id)
        assert math.isclose(float(element.attributes["data-value"]), expected, rel_tol=relative, abs_tol=1e-12), element_id
        scale = 100 if element_id == "hit-rate" else 1
        assert abs(number(element.all_text()) - expected * scale) <= 0.051, (element_id, element.all_text(), expected)
    assert shown("method").attributes["data-value"] == forecast["method"]

    spend_chart = dom.find_all("svg", data_chart="spend")
    assert len(spend_chart) == 1
    bars = [rect for rect in spend_chart[0].find_all("rect") if "bar" in rect.classes()]
    assert len(bars) == len(forecast["daily"])
    for bar, day in zip(bars, forecast["daily"]):
        assert bar.attributes["data-day"] == day["date"]
        assert math.isclose(float(bar.attributes["data-value"]), day["cost_usd"], rel_tol=1e-9, abs_tol=1e-12)
    forecast_lines = [path for path in spend_chart[0].find_all("path") if "forecast" in path.classes()]
    assert len(forecast_lines) == 1
    assert int(forecast_lines[0].attributes["data-points"]) == len(forecast["forecast_daily"])
    assert len(spend_chart[0].find_all("polygon")) == 1

    requests_chart = dom.find_all("svg", data_chart="requests")
    assert len(requests_chart) == 1
    request_bars = [rect for rect in requests_chart[0].find_all("rect") if "bar" in rect.classes()]
    assert [float(bar.attributes["data-value"]) for bar in request_bars] == [entry["requests"] for entry in usage["series"]]
    assert len([path for path in requests_chart[0].find_all("path") if "rate" in path.classes()]) == 1

    model_rows = [row.attributes["data-model"] for row in dom.find_all("tr") if "data-model" in row.attributes]
    assert model_rows == [group["group"] for group in models["groups"]][:10]
    variant_header = dom.find_all("table", id="variants")[0].find_all("thead")[0].all_text()
    assert "a" in variant_header
    assert "b" in variant_header

    # A screenshot, for a person to look at when the test fails.
    shot = chromium(page, tmp_path / "profile-screenshot", f"--screenshot={tmp_path / 'dashboard.png'}", "--window-size=1280,1800")
    assert shot.returncode == 0, shot.stderr[-2000:]
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000


def test_dashboard_without_token_shows_login(gateway_factory, tmp_path: Path) -> None:
    gateway = start(gateway_factory)
    dumped = chromium(f"{gateway.admin_url}/dashboard", tmp_path / "profile", "--dump-dom")
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    parser = DomParser()
    parser.feed(dumped.stdout)
    login = parser.root.find_all("form", id="login")[0]
    assert "hidden" not in login.attributes
    assert "hidden" in parser.root.find_all("main", id="dashboard")[0].attributes
