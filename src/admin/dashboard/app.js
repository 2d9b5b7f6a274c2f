// The WatchLLM dashboard. It reads the admin API of the gateway that served it, with the admin
// token from this tab's session storage, and draws its charts as inline SVG.
"use strict";

const TOKEN_KEY = "watchllm_admin_token";
const SVG_NS = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);

// A token in the URL fragment (#token=...) is moved to session storage and removed from the
// address bar. Browsers never send the fragment to the server, so it cannot reach a log.
function takeTokenFromFragment() {
  const match = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (!match) return;
  sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
  history.replaceState(null, "", location.pathname + location.search);
}

async function api(path) {
  const response = await fetch(path, { headers: { Authorization: "Bearer " + sessionStorage.getItem(TOKEN_KEY) } });
  if (response.status === 401 || response.status === 403) {
    sessionStorage.removeItem(TOKEN_KEY);
    throw new Error("The admin token was rejected (HTTP " + response.status + ").");
  }
  const body = await response.json();
  if (!response.ok) throw new Error(body.error ? body.error.message : "HTTP " + response.status);
  return body;
}

const usd = (value) => "$" + Number(value).toFixed(2);
const percent = (value) => (value === null || value === undefined ? "n/a" : (value * 100).toFixed(1) + "%");
const integer = (value) => Number(value).toLocaleString("en-US");

// Sets an element's text and keeps the exact value in data-value, for tests and tooltips.
function show(id, text, value) {
  const element = $(id);
  element.textContent = text;
  element.dataset.value = value === null || value === undefined ? "" : String(value);
}

function svg(tag, attributes, parent) {
  const element = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attributes)) element.setAttribute(name, value);
  if (parent) parent.appendChild(element);
  return element;
}

// Draws a chart of `days` (date strings) with bars and optional lines, and returns its SVG.
// `bars` has one value per day; each line is {points: [[dayIndex, value]], className, axis}.
function drawChart(container, name, days, bars, options) {
  const width = 900, height = 260, left = 56, right = options.rightAxis ? 48 : 12, top = 12, bottom = 28;
  const plotWidth = width - left - right, plotHeight = height - top - bottom;
  const maxLeft = Math.max(options.maxLeft || 0, ...bars, 1e-9);
  const step = plotWidth / Math.max(days.length, 1);
  const x = (index) => left + index * step + step / 2;
  const y = (value, max) => top + plotHeight - (value / max) * plotHeight;

  container.textContent = "";
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, "data-chart": name, role: "img" }, container);
  svg("line", { x1: left, y1: top + plotHeight, x2: width - right, y2: top + plotHeight, class: "axis" }, root);
  for (const fraction of [0, 0.5, 1]) {
    const label = svg("text", { x: left - 6, y: y(maxLeft * fraction, maxLeft) + 4, "text-anchor": "end" }, root);
    label.textContent = options.formatLeft(maxLeft * fraction);
  }
  if (options.rightAxis) {
    for (const fraction of [0, 0.5, 1]) {
      const label = svg("text", { x: width - right + 6, y: y(fraction, 1) + 4 }, root);
      label.textContent = (fraction * 100).toFixed(0) + "%";
    }
  }
  days.forEach((day, index) => {
    if (index % Math.ceil(days.length / 10) === 0) {
      const label = svg("text", { x: x(index), y: height - 8, "text-anchor": "middle" }, root);
      label.textContent = day.slice(5);
    }
  });
  bars.forEach((value, index) => {
    if (value === null || value === undefined) return;
    const bar = svg("rect", {
      x: x(index) - step * 0.35, y: y(value, maxLeft), width: step * 0.7,
      height: Math.max(top + plotHeight - y(value, maxLeft), 0),
      class: "bar" + (options.partialIndex === index ? " partial" : ""), "data-day": days[index], "data-value": value,
    }, root);
    svg("title", {}, bar).textContent = days[index] + ": " + options.formatLeft(value);
  });
  for (const band of options.bands || []) {
    if (band.upper.length === 0) continue;
    const upper = band.upper.map(([index, value]) => `${x(index)},${y(value, maxLeft)}`);
    const lower = band.lower.slice().reverse().map(([index, value]) => `${x(index)},${y(value, maxLeft)}`);
    svg("polygon", { points: upper.concat(lower).join(" "), class: "band" }, root);
  }
  for (const line of options.lines || []) {
    if (line.points.length === 0) continue;
    const max = line.axis === "right" ? 1 : maxLeft;
    const path = line.points.map(([index, value], n) => `${n ? "L" : "M"}${x(index)},${y(value, max)}`).join(" ");
    svg("path", { d: path, class: line.className, "data-points": line.points.length }, root);
  }
  return root;
}

function drawSpend(forecast) {
  const days = forecast.daily.map((d) => d.date).concat(forecast.forecast_daily.slice(1).map((d) => d.date));
  const bars = forecast.daily.map((d) => d.cost_usd);
  const start = forecast.daily.length - 1;
  const points = forecast.forecast_daily.map((d, n) => [start + n, d.cost_usd]);
  const upper = forecast.forecast_daily.map((d, n) => [start + n, d.upper_usd]);
  const lower = forecast.forecast_daily.map((d, n) => [start + n, d.lower_usd]);
  drawChart($("spend-chart"), "spend", days, bars, {
    formatLeft: usd,
    partialIndex: start,
    maxLeft: Math.max(0, ...upper.map((p) => p[1])),
    lines: [{ points, className: "forecast" }],
    bands: [{ upper, lower }],
  });
}

function drawRequests(cacheUsage) {
  const byDay = new Map();
  for (const entry of cacheUsage.series) {
    const day = entry.bucket_start.slice(0, 10);
    const totals = byDay.get(day) || { requests: 0, hits: 0, lookups: 0 };
    totals.requests += entry.requests;
    if (entry.group === "hit-exact" || entry.group === "hit-semantic") { totals.hits += entry.requests; totals.lookups += entry.requests; }
    if (entry.group === "miss") totals.lookups += entry.requests;
    byDay.set(day, totals);
  }
  const days = [...byDay.keys()];
  const rates = [];
  days.forEach((day, index) => {
    const totals = byDay.get(day);
    if (totals.lookups > 0) rates.push([index, totals.hits / totals.lookups]);
  });
  drawChart($("requests-chart"), "requests", days, days.map((d) => byDay.get(d).requests), {
    formatLeft: (v) => integer(Math.round(v)), rightAxis: true,
    lines: [{ points: rates, className: "rate", axis: "right" }],
  });
}

function fillModels(modelUsage) {
  const body = $("models").querySelector("tbody");
  body.textContent = "";
  for (const group of modelUsage.groups.slice(0, 10)) {
    const row = body.insertRow();
    row.dataset.model = group.group;
    for (const text of [group.group, integer(group.requests), integer(group.tokens.total), usd(group.cost_usd), usd(group.saved_usd)]) {
      row.insertCell().textContent = text;
    }
  }
}

// Shows the A/B variants side by side: one column per variant, one row per measure.
function fillVariants(variantUsage) {
  const variants = variantUsage.groups.filter((g) => g.group !== null);
  const table = $("variants");
  $("no-variants").hidden = variants.length > 0;
  table.hidden = variants.length === 0;
  const head = table.querySelector("thead");
  const body = table.querySelector("tbody");
  head.textContent = "";
  body.textContent = "";
  if (variants.length === 0) return;
  const header = head.insertRow();
  header.insertCell().textContent = "";
  for (const variant of variants) header.insertCell().textContent = variant.group;
  const measures = [
    ["Requests", (v) => integer(v.requests)],
    ["Error rate", (v) => percent(v.requests ? v.errors / v.requests : null)],
    ["Mean latency", (v) => (v.latency_ms_avg === null ? "n/a" : Math.round(v.latency_ms_avg) + " ms")],
    ["Tokens", (v) => integer(v.tokens.total)],
    ["Cost", (v) => usd(v.cost_usd)],
    ["Cost per request", (v) => (v.requests ? "$" + (v.cost_usd / v.requests).toFixed(5) : "n/a")],
  ];
  for (const [label, format] of measures) {
    const row = body.insertRow();
    row.insertCell().textContent = label;
    for (const variant of variants) row.insertCell().textContent = format(variant);
  }
}

async function loadProject(id) {
  $("status").textContent = "Loading…";
  const path = "/admin/projects/" + encodeURIComponent(id);
  const [forecast, savings, usage, cacheUsage, models, variants] = await Promise.all([
    api(path + "/forecast"),
    api(path + "/savings"),
    api(path + "/usage?granularity=day"),
    api(path + "/usage?granularity=day&group_by=cache"),
    api(path + "/usage?granularity=day&group_by=model"),
    api(path + "/usage?granularity=day&group_by=variant"),
  ]);

  show("spend-so-far", usd(forecast.spend_so_far_usd), forecast.spend_so_far_usd);
  show("month", forecast.month, forecast.month);
  show("projected", usd(forecast.projected_month_end_usd), forecast.projected_month_end_usd);
  show("interval", usd(forecast.interval.lower_usd) + " – " + usd(forecast.interval.upper_usd),
    forecast.interval.lower_usd + "," + forecast.interval.upper_usd);
  show("budget", forecast.budget_usd === null ? "none" : usd(forecast.budget_usd), forecast.budget_usd);
  const exhaustion = forecast.budget_usd === null ? "never: no budget is set" : forecast.projected_budget_exhaustion_date || "not this month";
  show("exhaustion", exhaustion, forecast.projected_budget_exhaustion_date);
  show("method", forecast.method.replaceAll("_", " ") + ", " + forecast.history_days + " days of history", forecast.method);
  $("alert").hidden = !forecast.projected_budget_exceeded;

  show("requests", integer(usage.totals.requests), usage.totals.requests);
  show("errors", integer(usage.totals.errors), usage.totals.errors);
  show("hit-rate", percent(savings.cache_hit_rate), savings.cache_hit_rate);
  show("cache-hits", integer(savings.cache_hits), savings.cache_hits);
  show("saved", usd(savings.saved_usd), savings.saved_usd);

  drawSpend(forecast);
  drawRequests(cacheUsage);
  fillModels(models);
  fillVariants(variants);

  $("status").textContent = "Updated " + new Date(forecast.generated_at).toLocaleString() + ".";
  document.body.dataset.loaded = id;
}

async function start() {
  takeTokenFromFragment();
  if (!sessionStorage.getItem(TOKEN_KEY)) {
    $("login").hidden = false;
    return;
  }
  $("dashboard").hidden = false;
  $("logout").hidden = false;
  try {
    const { projects } = await api("/admin/analytics/projects");
    const select = $("project");
    select.textContent = "";
    for (const project of projects) select.add(new Option(project.name, project.id));
    $("project-picker").hidden = projects.length === 0;
    if (projects.length === 0) {
      $("status").textContent = "No projects yet: create one with `watchllm project create NAME`.";
      return;
    }
    const wanted = new URLSearchParams(location.search).get("project");
    const chosen = projects.find((p) => p.id === wanted || p.name === wanted) || projects[0];
    select.value = chosen.id;
    select.onchange = () => loadProject(select.value).catch(fail);
    await loadProject(chosen.id);
  } catch (error) {
    fail(error);
  }
}

function fail(error) {
  $("status").textContent = "Failed to load the dashboard: " + error.message;
  $("status").classList.add("error");
  document.body.dataset.error = error.message;
  if (!sessionStorage.getItem(TOKEN_KEY)) {
    $("dashboard").hidden = true;
    $("login").hidden = false;
  }
}

$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token").value);
  $("login").hidden = true;
  start();
});
$("logout").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  location.reload();
});
start();
