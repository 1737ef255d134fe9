"""The dashboard: one self-contained page (inline CSS, JS and SVG; nothing from a CDN).

It reads ``/api/manager/aggregate_stats``, ``/v1/pools/<pool>``,
``/v1/scale/status?pool=<pool>`` and the broker's ``/api/v2/metadata``, and draws the
five 30-minute charts, the nodes, the recent operations with their events, and each broker
cluster's nodes, slot ranges and migrations under way; it refreshes every 10 s.
"""

from __future__ import annotations

import json

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from scaleflow.api.deps import SettingsDep

router = APIRouter(tags=["dashboard"])

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
  h2 { font-size: 16px; margin: 20px 0 8px; }
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
  table { border-collapse: collapse; width: 100%; background: #fff; }
  th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #eceef2; font-size: 12px; }
  th { background: #eef0f4; }
  code { font-size: 12px; }
  .op { background: #fff; border: 1px solid #dde1e8; border-radius: 6px;
        margin: 0 0 8px; padding: 6px 10px; }
  .op ul { margin: 4px 0 0; padding-left: 18px; font-size: 12px; }
  .st-success { color: #067647; } .st-failed { color: #b42318; } .st-cancelled { color: #93370d; }
  .st-started, .st-in-progress { color: #175cd3; }
  .cluster { background: #fff; border: 1px solid #dde1e8; border-radius: 6px;
             margin: 0 0 8px; padding: 6px 10px; }
  .cluster h3 { font-size: 13px; margin: 0 0 4px; }
  .moving { color: #175cd3; }
</style>
</head>
<body>
<h1>scaleflow &middot; pool <code id="pool"></code></h1>
<div id="status">loading&hellip;</div>
<div id="mode"></div>
<h2>Last 30 minutes</h2>
<div class="charts" id="charts"></div>
<h2>Nodes</h2>
<table id="nodes"><thead><tr><th>id</th><th>address</th><th>state</th><th>created</th></tr></thead>
<tbody></tbody></table>
<h2>Recent operations</h2>
<div id="ops"></div>
<h2>Broker clusters</h2>
<div id="broker"></div>
<div id="clusters"></div>
<script>
"use strict";
const POOL = __POOL__;
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

function el(tag, attrs, text) {
  const e = tag.startsWith("svg:") ? document.createElementNS(SVGNS, tag.slice(4))
                                   : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = String(text);
  return e;
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

function chart(series, values) {
  const box = el("div", {class: "chart", id: "chart-" + series.key});
  const h3 = el("h3", {}, series.title);
  h3.appendChild(el("span", {class: "latest"}, "now: " + fmt(values[values.length - 1] || 0)));
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
    const ago = n - 1 - i;
    svg.appendChild(el("svg:text", {x: x(i), y: H - 8, "text-anchor": "middle"},
                       ago === 0 ? "now" : `-${ago} min`));
  }
  const points = values.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
  svg.appendChild(el("svg:polyline", {class: "series", "data-series": series.key,
                                      points: points, stroke: series.color}));
  box.appendChild(svg);
  return box;
}

async function getJSON(path) {
  const resp = await fetch(path, {cache: "no-store"});
  const body = await resp.json();
  if (!resp.ok) {
    const err = body.error;
    const msg = (typeof err === "string" ? err : err && err.message) || body.Error ||
                resp.statusText;
    throw new Error(`${path}: ${resp.status} ${msg}`);
  }
  return body;
}

function drawCharts(content) {
  const box = document.getElementById("charts");
  box.replaceChildren(...SERIES.map(s => chart(s, (content[s.key] || []).map(Number))));
}

function drawNodes(view) {
  const body = document.querySelector("#nodes tbody");
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

function drawOps(docs) {
  const ops = Object.entries(docs).sort((a, b) => b[1].LastUpdate - a[1].LastUpdate).slice(0, 10);
  const box = document.getElementById("ops");
  if (!ops.length) { box.replaceChildren(el("p", {}, "No operations yet.")); return; }
  box.replaceChildren(...ops.map(([id, doc]) => {
    const div = el("div", {class: "op", "data-op": id});
    div.appendChild(el("strong", {}, doc.Direction + " "));
    div.appendChild(el("span", {class: "st-" + doc.Status}, doc.Status));
    div.appendChild(el("code", {}, "  " + id));
    const ul = el("ul");
    for (const ev of doc.Events || []) {
      const when = new Date(ev.Timestamp / 1e6).toLocaleTimeString();
      ul.appendChild(el("li", {}, `${when} [${ev.Source}] ${ev.Message}`));
    }
    div.appendChild(ul);
    return div;
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

async function refresh() {
  const status = document.getElementById("status");
  const problems = [];
  const q = encodeURIComponent(POOL);
  const parts = [
    getJSON("/api/manager/aggregate_stats").then(b => drawCharts(b.content)),
    getJSON("/v1/pools/" + q).then(drawNodes),
    getJSON("/v1/scale/status?pool=" + q).then(drawOps),
    getJSON("/api/v2/metadata").then(drawBroker),
  ];
  for (const r of await Promise.allSettled(parts)) {
    if (r.status === "rejected") problems.push(r.reason.message);
  }
  status.className = problems.length ? "error" : "";
  status.textContent = problems.length ? problems.join("; ")
    : "updated " + new Date().toLocaleTimeString() + " (every 10 s)";
  document.body.setAttribute("data-loaded", "true");
}

document.getElementById("pool").textContent = POOL;
refresh();
setInterval(refresh, 10000);
</script>
</body>
</html>
"""


def render(pool: str) -> str:
    # json.dumps quotes it as a JS string; "</" cannot end the script early.
    return PAGE.replace("__POOL__", json.dumps(pool).replace("</", "<\\/"))


@router.get("/", response_class=HTMLResponse)
@router.get("/dashboard", response_class=HTMLResponse)
async def dashboard(settings: SettingsDep) -> HTMLResponse:
    return HTMLResponse(render(settings.default_pool_name))
