// The status page: what the gateway is doing now, per provider, with live
// charts of the last 15 minutes. It polls GET /admin/status (cumulative
// counters and histogram buckets, merged over --workers) and turns the
// difference between two polls into rates and percentiles, so the gateway
// keeps no time series and the history lives only in this tab. Charts are
// uPlot (vendor/, loaded as a classic script before the modules).

import { api, handleCommon, t } from "./app.js";
import { Ring, providerRates, quantile, rates } from "./status_figures.js";
import { currentView } from "./views.js";

const POLL_MS = 2000;
const WINDOW_S = 15 * 60;
const CAPACITY = Math.ceil((WINDOW_S * 1000) / POLL_MS) + 1;
// The table's rates are over the last ~30 s: steadier than one poll's.
const TABLE_POLLS = 15;
const LOCALES = { en: "en", vi: "vi", zh: "zh-CN" };
const COLORS = [
  "#2457c5",
  "#c2410c",
  "#15803d",
  "#7c3aed",
  "#b91c1c",
  "#0e7490",
  "#a16207",
  "#be185d",
];
// Literal keys, so that the catalog test can see every key in use.
const REPLICA_STATES = {
  up: "replica.up",
  ejected: "replica.ejected",
  unhealthy: "replica.unhealthy",
};
const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900];
const CHARTS = ["rps", "errors", "ttfb", "tokens", "inflight", "overhead"];

const $ = (sel, root = document) => root.querySelector(sel);

const page = {
  running: false,
  timer: null,
  lang: "en",
  samples: new Ring(CAPACITY),
  recent: [], // the last TABLE_POLLS bodies, oldest first
  last: null,
  error: null,
  charts: {}, // kind -> {plot, key}
};

// -- formatting --------------------------------------------------------------

function locale() {
  return LOCALES[page.lang] || "en";
}

const fmt = {
  num: (v, digits = 2) =>
    new Intl.NumberFormat(locale(), { maximumFractionDigits: digits }).format(v),
  int: (v) => new Intl.NumberFormat(locale()).format(v),
  pct: (v) =>
    new Intl.NumberFormat(locale(), { style: "percent", maximumFractionDigits: 1 }).format(v),
  ms: (seconds) =>
    new Intl.NumberFormat(locale(), {
      style: "unit",
      unit: "millisecond",
      maximumSignificantDigits: 3,
    }).format(seconds * 1000),
  date: (iso) =>
    new Intl.DateTimeFormat(locale(), { dateStyle: "medium", timeStyle: "medium" }).format(
      new Date(iso),
    ),
  clock: (epochSeconds) =>
    new Intl.DateTimeFormat(locale(), {
      hour: "2-digit",
      minute: "2-digit",
      second: "2-digit",
    }).format(new Date(epochSeconds * 1000)),
};

const dash = "–";

// -- polling -----------------------------------------------------------------

async function poll() {
  page.timer = null;
  if (!page.running) return;
  try {
    const body = await api("GET", "status");
    if (!page.running) return;
    page.error = null;
    if (page.last) page.samples.push(rates(body, page.last));
    page.last = body;
    page.recent.push(body);
    if (page.recent.length > TABLE_POLLS) page.recent.shift();
  } catch (err) {
    if (handleCommon(err)) return; // signed out: the render event stops polling
    page.error =
      err.status === 0 ? { key: "error.network" } : { key: "error.http", status: err.status };
  }
  draw();
  if (page.running) page.timer = setTimeout(poll, POLL_MS);
}

function start() {
  if (page.running) return;
  page.running = true;
  poll();
}

function stop() {
  page.running = false;
  if (page.timer) clearTimeout(page.timer);
  page.timer = null;
  page.samples.clear();
  page.recent = [];
  page.last = null;
  for (const kind of Object.keys(page.charts)) dropChart(kind);
}

// -- drawing -----------------------------------------------------------------

function draw() {
  if (currentView() !== "status" || $("#view-status").hidden) return;
  $("#status-updated").textContent = page.last
    ? t("status.updated", { time: fmt.clock(page.last.time) })
    : "";
  const error = $("#status-error");
  error.hidden = !page.error;
  if (page.error) error.textContent = t(page.error.key, { status: page.error.status });
  if (!page.last) return;
  drawFacts(page.last);
  drawTable(page.last, page.recent.length > 1 ? page.recent[0] : null);
  drawCharts();
}

function drawFacts(body) {
  $("#st-digest").textContent = body.config.digest;
  $("#st-loaded").textContent = fmt.date(body.config.loaded_at);
  const reload = body.reload;
  const failed = reload && !reload.last_reload_ok;
  const facts = $("#status-facts");
  facts.dataset.reload = failed ? "failed" : "ok";
  let text = t("status.reload_none");
  if (failed) {
    text = t("status.reload_failed", { time: fmt.date(reload.last_error_at) });
  } else if (reload && reload.last_success) {
    text = t("status.reload_ok", { time: fmt.date(reload.last_success) });
  }
  $("#st-reload").textContent = text;
  $("#st-reload").className = failed ? "status-error" : "";
  const box = $("#st-reload-error");
  box.hidden = !failed;
  box.textContent = failed ? reload.last_error : "";
  const p50 = quantile(0.5, body.bounds.overhead, body.overhead.counts);
  const p95 = quantile(0.95, body.bounds.overhead, body.overhead.counts);
  $("#st-overhead").textContent = p50 === null ? dash : `${fmt.ms(p50)} / ${fmt.ms(p95)}`;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs))
    if (v !== null && v !== undefined) node.setAttribute(k, v);
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

function replicaList(replicas) {
  if (!replicas || !replicas.length) return dash;
  const pill = { up: "pill pill-ok", ejected: "pill pill-bad", unhealthy: "pill pill-warn" };
  return el(
    "ul",
    { class: "replicas" },
    ...replicas.map((r) =>
      el(
        "li",
        { "data-state": r.state },
        el("code", {}, r.url),
        " ",
        // A single base_url has no health state of its own (null): no badge.
        r.state
          ? el(
              "span",
              { class: pill[r.state] || "pill" },
              REPLICA_STATES[r.state] ? t(REPLICA_STATES[r.state]) : r.state,
            )
          : "",
        " ",
        t("status.replica_inflight", { count: fmt.int(r.in_flight || 0) }),
      ),
    ),
  );
}

function totalsCell(p) {
  const kinds = Object.entries(p.upstream_errors)
    .sort()
    .map(([kind, n]) => `${kind} × ${fmt.int(n)}`)
    .join(", ");
  const text = t("status.totals_text", {
    requests: fmt.int(p.requests),
    errors: fmt.int(p.errors),
  });
  return el(
    "td",
    { class: p.errors ? "detail errors" : "detail" },
    text,
    kinds ? el("br") : null,
    kinds || null,
  );
}

function drawTable(body, before) {
  const dt = before ? Math.max(body.time - before.time, 0.001) : 0;
  const old = before ? Object.fromEntries(before.providers.map((p) => [p.name, p])) : {};
  const rows = body.providers.map((p) => {
    const r = before ? providerRates(p, old[p.name], dt, body.bounds.ttfb) : null;
    const ttfb = r && r.p50 !== null ? `${fmt.ms(r.p50)} / ${fmt.ms(r.p95)}` : dash;
    const tokens = r ? `${fmt.num(r.tokIn, 1)} / ${fmt.num(r.tokOut, 1)}` : dash;
    const errorRate = r && r.errorRate !== null ? fmt.pct(r.errorRate) : dash;
    return el(
      "tr",
      {
        "data-provider": p.name,
        "data-errors": String(p.errors),
        class: p.errors ? "row-errors" : null,
      },
      el("td", { class: "name" }, p.name),
      el("td", { class: "num", "data-cell": "rps" }, r ? fmt.num(r.rps) : dash),
      el(
        "td",
        { class: r && r.errorRate ? "num errors" : "num", "data-cell": "error-rate" },
        errorRate,
      ),
      el("td", { class: "num" }, ttfb),
      el("td", { class: "num" }, tokens),
      el("td", { class: "num", "data-cell": "inflight" }, fmt.int(p.in_flight)),
      totalsCell(p),
      el("td", { class: "detail" }, replicaList(p.replicas)),
    );
  });
  $("#status-table tbody").replaceChildren(...rows);
  $("#status-empty").hidden = rows.length > 0;
}

// -- charts ------------------------------------------------------------------

/** [labels, values(sample) -> array] for one chart kind, given the providers. */
function seriesFor(kind, names) {
  const per = (pick) => [
    names,
    (s) => names.map((n) => (s.providers[n] ? pick(s.providers[n]) : null)),
  ];
  switch (kind) {
    case "rps":
      return per((p) => p.rps);
    case "errors":
      return per((p) => (p.errorRate === null ? null : p.errorRate * 100));
    case "ttfb":
      return [
        names.flatMap((n) => [`${n} p50`, `${n} p95`]),
        (s) =>
          names.flatMap((n) => {
            const p = s.providers[n];
            return p && p.p50 !== null ? [p.p50 * 1000, p.p95 * 1000] : [null, null];
          }),
      ];
    case "tokens":
      return [
        names.flatMap((n) => [`${n} ${t("chart.in")}`, `${n} ${t("chart.out")}`]),
        (s) =>
          names.flatMap((n) =>
            s.providers[n] ? [s.providers[n].tokIn, s.providers[n].tokOut] : [null, null],
          ),
      ];
    case "inflight":
      return per((p) => p.inflight);
    default: // overhead
      return [
        ["p50", "p95"],
        (s) => [
          s.overheadP50 === null ? null : s.overheadP50 * 1000,
          s.overheadP95 === null ? null : s.overheadP95 * 1000,
        ],
      ];
  }
}

function dropChart(kind) {
  const chart = page.charts[kind];
  if (chart) chart.plot.destroy();
  delete page.charts[kind];
}

function makeChart(kind, labels, host, width) {
  const paired = kind === "ttfb" || kind === "tokens" || kind === "overhead";
  const series = labels.map((label, i) => {
    const color = COLORS[(paired ? Math.floor(i / 2) : i) % COLORS.length];
    return {
      label,
      stroke: color,
      width: 2,
      dash: paired && i % 2 === 0 ? [5, 4] : undefined,
      value: (u, v) => (v === null || v === undefined ? dash : fmt.num(v)),
    };
  });
  const opts = {
    width,
    height: 200,
    series: [
      { label: t("chart.time"), value: (u, v) => (v === null ? dash : fmt.clock(v)) },
      ...series,
    ],
    scales: {
      // At least a minute wide, so that the first few polls still get a time axis.
      x: { time: true, range: (u, min, max) => [Math.min(min, max - 60), max] },
      y: { range: (u, min, max) => [0, max > 0 ? max * 1.15 : 1] },
    },
    axes: [
      // Whole seconds at least: polls are seconds apart.
      { values: (u, splits) => splits.map((v) => fmt.clock(v)), space: 80, incrs: TIME_STEPS },
      { values: (u, splits) => splits.map((v) => fmt.num(v)), size: 56 },
    ],
    // Labels only: values at the cursor would need a hover, and the table has them.
    legend: { show: true, live: false },
  };
  return new window.uPlot(opts, [[], ...labels.map(() => [])], host);
}

function drawCharts() {
  const samples = page.samples.toArray();
  const names = page.last.providers.map((p) => p.name);
  for (const kind of CHARTS) {
    const figure = $(`#charts [data-chart="${kind}"]`);
    const host = $(".plot", figure);
    const width = Math.max(host.clientWidth, 240);
    const [labels, values] = seriesFor(kind, names);
    const key = `${page.lang}|${labels.join(",")}`;
    let chart = page.charts[kind];
    if (!chart || chart.key !== key) {
      dropChart(kind);
      chart = page.charts[kind] = { plot: makeChart(kind, labels, host, width), key };
    } else if (chart.plot.width !== width) {
      chart.plot.setSize({ width, height: 200 });
    }
    const columns = samples.map(values);
    const data = [samples.map((s) => s.time), ...labels.map((_, i) => columns.map((c) => c[i]))];
    chart.plot.setData(data);
    // For tests and for a person reading the DOM: how much the chart holds.
    let peak = 0;
    for (const column of columns) for (const v of column) if (v > peak) peak = v;
    figure.dataset.points = String(samples.length);
    figure.dataset.peak = String(peak);
  }
}

// -- wiring ------------------------------------------------------------------

document.addEventListener("gateway:render", (e) => {
  const { signedIn, lang } = e.detail;
  page.lang = lang;
  if (!signedIn) return stop();
  start();
  draw();
});
document.addEventListener("gateway:view", (e) => {
  if (e.detail.view === "status") draw();
});
window.addEventListener("resize", () => {
  if (page.last) draw();
});
