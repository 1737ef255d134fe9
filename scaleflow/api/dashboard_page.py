"""The dashboard page: one self-contained document (inline CSS, JS and SVG; nothing
from a CDN), rendered with a small JSON config and filled in by the browser.

What it reads, all from this API:

- ``/v1/pools`` for the pool selector (the choice is kept in ``?pool=``), and
  ``/v1/pools/<pool>`` for its nodes and bounds;
- ``/dashboard/data/pools/<pool>/stats`` for the five 30-minute charts (each point has
  a ``<title>`` and the chart's header reads out the hovered value);
- ``/v1/scale/status?pool=<pool>`` for recent operations, each linked to its workflow
  in the Temporal UI, and ``/v1/scale/progress/<id>`` for the ones still running:
  re-read every second while any runs, so their progress moves on the page;
- ``/dashboard/data/services`` for the genisys services, and the broker's
  ``/api/v2/metadata`` for its clusters' nodes, slot ranges and migrations.

Everything else is refreshed every 10 s.
"""

from __future__ import annotations

import json

from scaleflow.core.settings import Settings

PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>scaleflow dashboard</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 16px 24px;
         color: #1d2433; background: #f6f7f9; }
  h1 { font-size: 20px; margin: 0 0 4px; }
  h1 select { font: inherit; font-size: 16px; }
  h2 { font-size: 16px; margin: 20px 0 8px; }
  a.ui-link { font-size: 12px; font-weight: 400; margin-left: 8px; }
  #status { color: #5b6475; font-size: 12px; }
  #status.error { color: #b42318; }
  .charts { display: grid; gap: 12px;
            grid-template-columns: repeat(auto-fill, minmax(400px, 1fr)); }
  .chart { background: #fff; border: 1px solid #dde1e8; border-radius: 6px; padding: 8px; }
  .chart h3 { font-size: 13px; margin: 0 0 4px; font-weight: 600; }
  .chart .latest { float: right; font-weight: 400; color: #5b6475; }
  svg { width: 100%; height: auto; display: block; }
  svg .axis { stroke: #8a93a5; stroke-width: 1; }
  svg .grid { stroke: #eceef2; stroke-width: 1; }
  svg text { font-size: 10px; fill: #5b6475; }
  svg polyline { fill: none; stroke-width: 2; }
  svg .pt rect { fill: transparent; }
  svg .pt circle { opacity: 0; }
  svg .pt:hover rect { fill: rgba(29, 36, 51, 0.05); }
  svg .pt:hover circle { opacity: 1; }
  table { border-collapse: collapse; width: 100%; background: #fff; }
  th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #eceef2; font-size: 12px; }
  th { background: #eef0f4; }
  code { font-size: 12px; }
  .op { background: #fff; border: 1px solid #dde1e8; border-radius: 6px;
        margin: 0 0 8px; padding: 6px 10px; }
  .op ul { margin: 4px 0 0; padding-left: 18px; font-size: 12px; }
  .progress { margin: 4px 0 0; font-size: 12px; }
  .progress progress { width: 240px; vertical-align: middle; margin-right: 8px; }
  .st-success { color: #067647; } .st-failed { color: #b42318; } .st-cancelled { color: #93370d; }
  .st-started, .st-in-progress { color: #175cd3; }
  .cluster { background: #fff; border: 1px solid #dde1e8; border-radius: 6px;
             margin: 0 0 8px; padding: 6px 10px; }
  .cluster h3 { font-size: 13px; margin: 0 0 4px; }
  .moving { color: #175cd3; }
</style>
</head>
<body>
<h1>scaleflow &middot; pool <select id="pool" aria-label="pool"></select>
<a id="pool-ui" class="ui-link" target="_blank" rel="noopener">entity in the Temporal UI</a></h1>
<div id="status">loading&hellip;</div>
<div id="mode"></div>
<h2>Last 30 minutes</h2>
<div class="charts" id="charts"></div>
<h2>Nodes</h2>
<table id="nodes"><thead><tr><th>id</th><th>address</th><th>state</th><th>created</th></tr></thead>
<tbody></tbody></table>
<h2>Recent operations</h2>
<div id="ops"></div>
<h2>Autoscaler decisions</h2>
<table id="decisions"><thead><tr><th>at</th><th>rule</th><th>reading</th><th>result</th>
<th>count</th><th>acted</th></tr></thead>
<tbody></tbody></table>
<h2>genisys services</h2>
<table id="services"><thead><tr><th>service</th><th>compute</th><th>desired</th>
<th>running resources</th><th>observed</th><th>operation</th><th>last error</th></tr></thead>
<tbody></tbody></table>
<h2>Broker clusters</h2>
<div id="broker"></div>
<div id="clusters"></div>
<script>
"use strict";
const CONFIG = __CONFIG__;
const SERIES = [
  {key: "miss_rate", title: "Miss rate", max: 1, color: "#d92d20"},
  {key: "hit_rate", title: "Hit rate", max: 1, color: "#079455"},
  {key: "number_of_items_in_cache", title: "Items in cache", color: "#1570ef"},
  {key: "total_size_of_items_in_cache", title: "Size of items in cache (MB)", color: "#6938ef"},
  {key: "number_of_requests_served_per_minute", title: "Requests served per minute",
   color: "#dc6803"},
];
const W = 440, H = 170, L = 48, R = 10, T = 10, B = 26;
const SVGNS = "http://www.w3.org/2000/svg";
const RUNNING = new Set(["started", "in-progress"]);
const REFRESH_MS = 10000, OPS_POLL_MS = 1000, MAX_OPS = 10;

let pool = new URLSearchParams(location.search).get("pool") || CONFIG.default_pool;
let chartsKey = "";        // what the charts show: redrawn only when it changes (keeps a hover)
let selectorKey = "";      // likewise the selector's options (keeps it open)
let opsTimer = null;       // the 1 s poll, pending while an operation runs
let opsSeq = 0;            // only the newest operations read is drawn
const sawRunning = new Set();  // operations this page saw running ...
const finals = new Map();      // ... and their progress once closed (read once: it never changes)
const finalErrors = new Map(); // failed reads of a closed one's progress, by operation
const FINAL_TRIES = 3;

function el(tag, attrs, text) {
  const e = tag.startsWith("svg:") ? document.createElementNS(SVGNS, tag.slice(4))
                                   : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = String(text);
  return e;
}

// The Temporal UI on the host this page was reached by (the dev server and compose both
// publish it next to the API), at the configured port.
function uiHref(workflowId) {
  return `http://${location.hostname}:${CONFIG.temporal_ui_port}/namespaces/` +
         `${encodeURIComponent(CONFIG.namespace)}/workflows/${encodeURIComponent(workflowId)}`;
}

function uiLink(workflowId) {
  return el("a", {class: "ui-link", target: "_blank", rel: "noopener",
                  href: uiHref(workflowId)}, "Temporal UI");
}

function niceMax(values, fixed) {
  if (fixed) return fixed;
  const top = Math.max(0, ...values);
  if (top <= 0) return 1;
  const mag = Math.pow(10, Math.floor(Math.log10(top)));
  for (const m of [1, 2, 2.5, 5, 10]) if (top <= m * mag) return m * mag;
  return 10 * mag;
}

function fmt(v) {
  if (Number.isInteger(v)) return String(v);
  return Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 1 ? v.toFixed(1) : v.toFixed(2);
}

function ago(n, i) {
  const back = n - 1 - i;
  return back === 0 ? "now" : `-${back} min`;
}

function chart(series, values) {
  const box = el("div", {class: "chart", id: "chart-" + series.key});
  const h3 = el("h3", {}, series.title);
  const latestText = "now: " + fmt(values[values.length - 1] || 0);
  const latest = el("span", {class: "latest"}, latestText);
  h3.appendChild(latest);
  box.appendChild(h3);
  const svg = el("svg:svg", {viewBox: `0 0 ${W} ${H}`, "data-series": series.key});
  const pw = W - L - R, ph = H - T - B, max = niceMax(values, series.max);
  const n = Math.max(values.length, 2);
  const x = i => L + (i * pw) / (n - 1);
  const y = v => T + ph - (Math.max(0, v) / max) * ph;
  for (const f of [0, 0.5, 1]) {
    const yy = T + ph - f * ph;
    svg.appendChild(el("svg:line", {class: "grid", x1: L, x2: W - R, y1: yy, y2: yy}));
    svg.appendChild(el("svg:text", {x: L - 4, y: yy + 3, "text-anchor": "end"}, fmt(f * max)));
  }
  svg.appendChild(el("svg:line", {class: "axis", x1: L, x2: L, y1: T, y2: T + ph}));
  svg.appendChild(el("svg:line", {class: "axis", x1: L, x2: W - R, y1: T + ph, y2: T + ph}));
  for (const i of [0, 10, 20, n - 1]) {
    svg.appendChild(el("svg:text", {x: x(i), y: H - 8, "text-anchor": "middle"}, ago(n, i)));
  }
  const points = values.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
  svg.appendChild(el("svg:polyline", {class: "series", "data-series": series.key,
                                      points: points, stroke: series.color}));
  // One hover band per point, over the line: its <title> is the browser's tooltip, and
  // the header reads the value out at once (a title shows only after a delay).
  const band = pw / (n - 1);
  values.forEach((v, i) => {
    const label = `${ago(n, i)}: ${v}`;
    const g = el("svg:g", {class: "pt", "data-index": i, "data-label": label});
    g.appendChild(el("svg:rect", {x: (x(i) - band / 2).toFixed(1), y: T,
                                  width: band.toFixed(1), height: ph}));
    g.appendChild(el("svg:circle", {cx: x(i).toFixed(1), cy: y(v).toFixed(1), r: 3.5,
                                    fill: series.color}));
    g.appendChild(el("svg:title", {}, `${series.title}, ${label}`));
    svg.appendChild(g);
  });
  svg.addEventListener("mouseover", e => {
    const g = e.target.closest("g.pt");
    if (g) latest.textContent = g.getAttribute("data-label");
  });
  svg.addEventListener("mouseleave", () => { latest.textContent = latestText; });
  box.appendChild(svg);
  return box;
}

async function getJSON(path) {
  const resp = await fetch(path, {cache: "no-store"});
  let body = null;
  try { body = await resp.json(); } catch (e) { body = null; }
  if (!resp.ok || body === null) {
    const err = body && body.error;
    const msg = (typeof err === "string" ? err : err && err.message) ||
                (body && (body.Error || body.message)) || resp.statusText;
    throw new Error(`${path}: ${resp.status} ${msg}`);
  }
  return body;
}

function current(name) { return name === pool; }

function drawSelector(views) {
  const names = views.map(v => v.name);
  const options = views.map(v => [v.name, `${v.name} (${v.nodes.length} node` +
                                           `${v.nodes.length === 1 ? "" : "s"})`]);
  if (!names.includes(pool)) options.unshift([pool, `${pool} (no such pool)`]);
  const key = JSON.stringify(options);
  const select = document.getElementById("pool");
  if (key !== selectorKey) {
    selectorKey = key;
    select.replaceChildren(...options.map(([v, t]) => el("option", {value: v}, t)));
  }
  select.value = pool;
}

function drawCharts(content) {
  const key = pool + " " + JSON.stringify(content);
  if (key === chartsKey) return;
  chartsKey = key;
  const box = document.getElementById("charts");
  box.setAttribute("data-pool", pool);
  box.replaceChildren(...SERIES.map(s => chart(s, (content[s.key] || []).map(Number))));
}

function drawNodes(view) {
  const body = document.querySelector("#nodes tbody");
  body.setAttribute("data-pool", view.name);
  body.replaceChildren(...view.nodes.map(n => {
    const tr = el("tr", {"data-node": n.id});
    for (const v of [n.id, n.address || "", n.state, new Date(n.created_at).toLocaleString()]) {
      tr.appendChild(el("td", {}, v));
    }
    return tr;
  }));
  const a = view.autoscaler || {};
  document.getElementById("mode").textContent =
    `${view.nodes.length} node(s), MinCount ${view.config.min_count}, MaxCount ` +
    `${view.config.max_count}; auto-scaler ${a.auto_mode ? "automatic" : "manual"}` +
    (a.auto_mode ? ` (miss rate ${a.min_miss_rate_threshold}..${a.max_miss_rate_threshold},` +
                   ` expand x${a.expand_ratio}, shrink x${a.shrink_ratio})` : "") +
    `; queue ${view.queue.length}`;
}

// The autoscaler's last decisions, newest first (GET /v1/pools/{name}/decisions).
function drawDecisions(name, list) {
  const body = document.querySelector("#decisions tbody");
  body.setAttribute("data-pool", name);
  if (!list.length) {
    const tr = el("tr");
    tr.appendChild(el("td", {colspan: 6}, "No decisions yet."));
    body.replaceChildren(tr);
    return;
  }
  body.replaceChildren(...list.slice(-20).reverse().map(d => {
    const tr = el("tr", {"data-acted": String(d.acted)});
    const count = d.new_count === null ? `${d.count}` : `${d.count} \u2192 ${d.new_count}`;
    const acted = d.acted ? "queued" : d.dry_run && d.new_count !== null ? "dry run" : "no";
    const cells = [new Date(d.at).toLocaleTimeString(), d.rule, `${d.reading} (${d.source})`,
                   d.result, count];
    for (const c of cells) tr.appendChild(el("td", {}, c));
    const td = el("td", {}, acted);
    if (d.operation) td.appendChild(uiLink(d.operation));
    tr.appendChild(td);
    return tr;
  }));
}

function elapsed(doc) {
  const first = (doc.Events || [])[0];
  if (!first) return "";
  const s = Math.max(0, Math.round((Date.now() - first.Timestamp / 1e6) / 1000));
  return s < 120 ? `${s} s` : `${Math.floor(s / 60)} min ${s % 60} s`;
}

function progressBlock(id, doc, p) {
  const box = el("div", {class: "progress", "data-progress-for": id});
  if (!p) { box.textContent = "progress: reading\u2026"; return box; }
  if (p.error) {
    box.appendChild(el("span", {class: "details"}, "progress unavailable: " + p.error));
    return box;
  }
  for (const k of ["slots_done", "slots_total", "keys_moved"]) {
    box.setAttribute("data-" + k.replace(/_/g, "-"), p[k]);
  }
  // No slots to move (yet): an indeterminate bar while it runs.
  box.appendChild(el("progress", p.slots_total ? {max: p.slots_total, value: p.slots_done}
                                               : {}));
  const pct = p.slots_total ? `${Math.floor((100 * p.slots_done) / p.slots_total)}% \u00b7 ` : "";
  box.appendChild(el("span", {class: "details"}, pct + p.details));
  if (RUNNING.has(doc.Status)) {
    const how = doc.Status === "started" ? "queued" : "running";  // "started": not begun yet
    box.appendChild(el("span", {class: "elapsed"}, ` \u00b7 ${how} for ${elapsed(doc)}`));
  }
  return box;
}

function drawOps(ops, progress) {
  const box = document.getElementById("ops");
  box.setAttribute("data-pool", pool);
  if (!ops.length) { box.replaceChildren(el("p", {}, "No operations yet.")); return; }
  box.replaceChildren(...ops.map(([id, doc]) => {
    const div = el("div", {class: "op", "data-op": id, "data-status": doc.Status});
    div.appendChild(el("strong", {}, doc.Direction + " "));
    div.appendChild(el("span", {class: "st-" + doc.Status}, doc.Status));
    div.appendChild(el("code", {}, "  " + id));
    div.appendChild(uiLink(id));
    if (RUNNING.has(doc.Status) || finals.has(id)) {
      div.appendChild(progressBlock(id, doc, progress[id] || finals.get(id)));
    }
    const ul = el("ul");
    for (const ev of doc.Events || []) {
      const when = new Date(ev.Timestamp / 1e6).toLocaleTimeString();
      ul.appendChild(el("li", {}, `${when} [${ev.Source}] ${ev.Message}`));
    }
    div.appendChild(ul);
    return div;
  }));
}

// Running operations first (all of them), then the most recently updated.
function opsToShow(docs) {
  const all = Object.entries(docs).sort((a, b) => b[1].LastUpdate - a[1].LastUpdate);
  const running = all.filter(([, d]) => RUNNING.has(d.Status));
  const rest = all.filter(([, d]) => !RUNNING.has(d.Status));
  return running.concat(rest.slice(0, Math.max(0, MAX_OPS - running.length)));
}

function bump(id) {
  const n = (finalErrors.get(id) || 0) + 1;
  finalErrors.set(id, n);
  return n;
}

async function readProgress(id) {
  try { return await getJSON("/v1/scale/progress/" + encodeURIComponent(id)); }
  catch (e) { return {error: e.message}; }
}

async function refreshOps(name) {
  const seq = ++opsSeq;
  const docs = await getJSON("/v1/scale/status?pool=" + encodeURIComponent(name));
  const ops = opsToShow(docs);
  // Running ones are read on every poll; one seen running is read once more when it
  // closes, so that it ends on its final figures.
  const wanted = ops.filter(([id, d]) => RUNNING.has(d.Status) ||
                                         (sawRunning.has(id) && !finals.has(id)));
  const answers = await Promise.all(wanted.map(([id]) => readProgress(id)));
  const progress = {};
  let closed = false;
  wanted.forEach(([id, d], i) => {
    const p = answers[i];
    progress[id] = p;
    if (RUNNING.has(d.Status)) {
      sawRunning.add(id);
    } else if (p.error ? bump(id) >= FINAL_TRIES : !RUNNING.has(p.status)) {
      finals.set(id, p);  // an error too, after a few tries: not re-read every second
      closed = true;
    }
  });
  if (seq !== opsSeq || !current(name)) return;  // a newer read, or another pool, won
  drawOps(ops, progress);
  const pending = ops.some(([id, d]) => RUNNING.has(d.Status) ||
                                        (sawRunning.has(id) && !finals.has(id)));
  if (pending && opsTimer === null) {
    opsTimer = setTimeout(pollOps, OPS_POLL_MS);
  }
  // An operation just ended: nodes, charts and the selector's counts changed with it.
  if (closed) refresh();
}

// While an operation runs: its progress, and the nodes it adds or removes.
function pollOps() {
  opsTimer = null;
  const name = pool;
  Promise.all([
    refreshOps(name),
    getJSON("/v1/pools/" + encodeURIComponent(name))
      .then(v => { if (current(name)) drawNodes(v); }),
  ]).catch(e => { if (current(name)) showStatus([e.message]); });
}

function drawServices(rows) {
  const body = document.querySelector("#services tbody");
  if (!rows.length) {
    const tr = el("tr");
    tr.appendChild(el("td", {colspan: 7}, "No genisys services."));
    body.replaceChildren(tr);
    return;
  }
  body.replaceChildren(...rows.map(row => {
    const tr = el("tr", {"data-service": row.service});
    const v = row.view || {};
    const shown = v.observed_at ? new Date(v.observed_at).toLocaleTimeString() : "";
    const cells = [row.service, v.compute, v.desired, v.running_resources, shown];
    for (const c of cells) tr.appendChild(el("td", {}, c === null || c === undefined ? "" : c));
    const op = el("td", {});
    if (v.running) { op.appendChild(el("code", {}, v.running)); op.appendChild(uiLink(v.running)); }
    tr.appendChild(op);
    tr.appendChild(el("td", {}, row.problem || v.last_error || ""));
    return tr;
  }));
}

function rangesText(list) {
  return list.map(([a, b]) => a === b ? String(a) : `${a}-${b}`).join(", ");
}

function slotsText(slot) {
  const r = rangesText(slot.range_list);
  if (slot.tag === "None") return r;
  if (slot.tag.Migrating) return `${r} migrating to ${slot.tag.Migrating.dst_node_address}`;
  return `${r} importing from ${slot.tag.Importing.src_node_address}`;
}

function drawCluster(c) {
  const div = el("div", {class: "cluster", "data-cluster": c.name});
  const moves = c.nodes.flatMap(n => n.slots.filter(s => s.tag !== "None" && s.tag.Migrating));
  div.appendChild(el("h3", {}, `${c.name}: ${c.nodes.length} nodes, epoch ${c.epoch}, ` +
                               `${moves.length} migration(s) under way`));
  const table = el("table");
  const head = el("tr");
  for (const h of ["node", "proxy", "role", "slots"]) head.appendChild(el("th", {}, h));
  table.appendChild(head);
  for (const n of c.nodes) {
    const tr = el("tr", {"data-node-address": n.address});
    tr.appendChild(el("td", {}, n.address));
    tr.appendChild(el("td", {}, n.proxy_address));
    tr.appendChild(el("td", {}, n.repl.role));
    const td = el("td", {"data-slots": ""});
    n.slots.forEach((s, i) => {
      if (i) td.appendChild(document.createTextNode("; "));
      td.appendChild(el("span", {class: s.tag === "None" ? "" : "moving"}, slotsText(s)));
    });
    tr.appendChild(td);
    table.appendChild(tr);
  }
  div.appendChild(table);
  if (moves.length) {
    const ul = el("ul");
    for (const s of moves) {
      const m = s.tag.Migrating;
      ul.appendChild(el("li", {"data-migration": m.src_node_address},
                        `${rangesText(s.range_list)}: ${m.src_node_address} -> ` +
                        `${m.dst_node_address}`));
    }
    div.appendChild(ul);
  }
  return div;
}

function drawBroker(meta) {
  const proxies = Object.values(meta.all_proxies);
  const free = proxies.filter(p => p.cluster === null).length;
  document.getElementById("broker").textContent =
    `epoch ${meta.global_epoch}; ${proxies.length} proxies, ${free} free; ` +
    `failed: ${meta.failed_proxies.join(", ") || "none"}`;
  const names = Object.keys(meta.clusters).sort();
  const box = document.getElementById("clusters");
  box.replaceChildren(...(names.length ? names.map(n => drawCluster(meta.clusters[n]))
                                       : [el("p", {}, "No clusters.")]));
}

function showStatus(problems) {
  const status = document.getElementById("status");
  status.className = problems.length ? "error" : "";
  status.textContent = problems.length ? problems.join("; ")
    : `updated ${new Date().toLocaleTimeString()} (every 10 s; every second while an ` +
      `operation runs)`;
}

async function refresh() {
  const name = pool, q = encodeURIComponent(name);
  document.getElementById("pool-ui").setAttribute("href", uiHref("pool/" + name));
  const parts = [
    getJSON("/v1/pools").then(drawSelector),
    getJSON(`/dashboard/data/pools/${q}/stats`)
      .then(b => { if (current(name)) drawCharts(b.content); }),
    getJSON("/v1/pools/" + q).then(v => { if (current(name)) drawNodes(v); }),
    getJSON(`/v1/pools/${q}/decisions`)
      .then(d => { if (current(name)) drawDecisions(name, d); }),
    refreshOps(name),
    getJSON("/dashboard/data/services").then(drawServices),
    getJSON("/api/v2/metadata").then(drawBroker),
  ];
  const problems = [];
  for (const r of await Promise.allSettled(parts)) {
    if (r.status === "rejected") problems.push(r.reason.message);
  }
  if (!current(name)) return;  // the pool changed meanwhile: its own refresh reports
  showStatus(problems);
  document.body.setAttribute("data-loaded", "true");
}

// Another pool: nothing of the previous one may stay on the page under the new name.
function switchPool(name, push) {
  if (name === pool) return;
  pool = name;
  if (push) {
    const url = new URL(location.href);
    url.searchParams.set("pool", name);
    history.pushState(null, "", url);
  }
  chartsKey = "";
  document.getElementById("charts").replaceChildren();
  document.querySelector("#nodes tbody").replaceChildren();
  document.getElementById("ops").replaceChildren();
  document.querySelector("#decisions tbody").replaceChildren();
  document.getElementById("mode").textContent = "";
  document.getElementById("pool").value = name;
  document.getElementById("status").textContent = "loading\u2026";
  refresh();
}

document.getElementById("pool").addEventListener("change", e => switchPool(e.target.value, true));
window.addEventListener("popstate", () => {
  switchPool(new URLSearchParams(location.search).get("pool") || CONFIG.default_pool, false);
});
refresh();
setInterval(refresh, REFRESH_MS);
</script>
</body>
</html>
"""


def render(settings: Settings) -> str:
    """The page, with the settings the browser needs (never a secret)."""
    config = {
        "default_pool": settings.default_pool_name,
        "namespace": settings.temporal_namespace,
        "temporal_ui_port": settings.temporal_ui_port,
    }
    # "</" inside a JSON string could end the script early.
    return PAGE.replace("__CONFIG__", json.dumps(config).replace("</", "<\\/"))
