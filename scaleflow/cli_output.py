"""What the read verbs print: the API's JSON as it came, or rich tables.

``--output json`` prints plain JSON (no colour, no wrapping) for scripts; ``table``
renders with rich. Without ``--output``, a terminal gets tables and a pipe gets JSON,
as the verbs printed before tables existed.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, Literal

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

OutputFormat = Literal["json", "table"]
TableBuilder = Callable[[Any], RenderableType]
FINAL_STYLE = {"success": "green", "failed": "red", "cancelled": "yellow"}


def default_format() -> OutputFormat:
    return "table" if sys.stdout.isatty() else "json"


def emit(data: Any, fmt: OutputFormat, build: TableBuilder, console: Console) -> None:
    if fmt == "json":
        # print, not rich: exactly the JSON, whatever the terminal's width.
        print(json.dumps(data, indent=2, default=str))
    else:
        console.print(build(data))


def clock(ns: int | None) -> str:
    """A nanosecond timestamp (the event documents') as local date and time."""
    if not ns:
        return ""
    return datetime.fromtimestamp(ns / 1e9).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def cell(value: Any) -> Text:
    """A table cell, never read as markup (messages and names may hold brackets)."""
    if value is None:
        return Text("-", style="dim")
    if isinstance(value, bool):
        return Text("yes" if value else "no")
    if isinstance(value, dict | list):
        return Text(json.dumps(value, default=str))
    return Text(str(value))


def status_text(status: str) -> Text:
    return Text(status, style=FINAL_STYLE.get(status, "cyan"))


def table(title: str | None, columns: Iterable[str], rows: Iterable[Iterable[Any]]) -> Table:
    t = Table(title=title, title_justify="left")
    for name in columns:
        t.add_column(name)
    for row in rows:
        t.add_row(*(v if isinstance(v, Text) else cell(v) for v in row))
    return t


def fields(title: str | None, data: dict[str, Any], keys: Iterable[str] | None = None) -> Table:
    """One object as a two-column table."""
    t = Table(title=title, title_justify="left", show_header=False)
    t.add_column(style="bold")
    t.add_column()
    for key in keys if keys is not None else data:
        if key in data:
            t.add_row(key, cell(data[key]))
    return t


# ---- scaling events -------------------------------------------------------------


def event_rows(doc: dict[str, Any]) -> list[list[Any]]:
    return [
        [clock(e.get("Timestamp")), e.get("Source", ""), e.get("Message", "")]
        for e in doc.get("Events", [])
    ]


def operation_table(data: dict[str, Any], op_id: str | None = None) -> RenderableType:
    head = fields(
        f"operation {op_id}" if op_id else None,
        {**data, "LastUpdate": clock(data.get("LastUpdate"))},
        ["Direction", "Status", "Provider", "ProviderCfg", "LastUpdate"],
    )
    return Group(head, table("events", ["time", "source", "message"], event_rows(data)))


def operations_table(data: dict[str, Any]) -> RenderableType:
    rows = []
    for op_id, doc in data.items():
        events = doc.get("Events") or [{}]
        rows.append(
            [
                op_id,
                doc.get("Direction"),
                status_text(str(doc.get("Status"))),
                clock(events[0].get("Timestamp")),
                clock(doc.get("LastUpdate")),
                events[-1].get("Message"),
            ]
        )
    return table(
        "operations", ["ID", "direction", "status", "started", "last update", "last event"], rows
    )


def progress_table(data: dict[str, Any]) -> RenderableType:
    return fields(
        "progress",
        data,
        ["status", "slots_done", "slots_total", "keys_moved", "details", "migrations"],
    )


# ---- pools and policies -------------------------------------------------------------


def _bounds(config: dict[str, Any]) -> str:
    return f"{config.get('min_count')}..{config.get('max_count')}"


def pools_table(data: list[dict[str, Any]]) -> RenderableType:
    rows = []
    for view in data:
        cfg = view.get("config", {})
        nodes = view.get("nodes", [])
        ready = sum(1 for n in nodes if n.get("state") == "ready")
        rows.append(
            [
                view.get("name"),
                cfg.get("engine"),
                cfg.get("provider"),
                f"{ready}/{len(nodes)}",
                _bounds(cfg),
                len(view.get("queue", [])),
                view.get("running"),
            ]
        )
    return table(
        "pools",
        ["name", "engine", "provider", "ready/nodes", "min..max", "queued", "running"],
        rows,
    )


def pool_table(view: dict[str, Any]) -> RenderableType:
    cfg = view.get("config", {})
    summary = fields(
        f"pool {view.get('name')}",
        {
            **cfg,
            "bounds": _bounds(cfg),
            "has_policy": view.get("has_policy"),
            "queue": view.get("queue"),
            "running": view.get("running"),
        },
        [
            "enabled",
            "engine",
            "provider",
            "provider_config",
            "bounds",
            "selector",
            "capacity_mb",
            "eviction",
            "has_policy",
            "running",
            "queue",
        ],
    )
    nodes = table(
        "nodes",
        ["id", "address", "state", "created"],
        [
            [n.get("id"), n.get("address"), n.get("state"), n.get("created_at")]
            for n in view.get("nodes", [])
        ],
    )
    return Group(summary, nodes)


def slots_table(data: dict[str, Any]) -> RenderableType:
    addresses = data.get("addresses", {})
    rows = [
        [f"{r.get('start')}-{r.get('end')}", r.get("node"), addresses.get(r.get("node"))]
        for r in data.get("ranges", [])
    ]
    ranges = table(f"slot map, epoch {data.get('epoch')}", ["slots", "node", "address"], rows)
    moving = data.get("moving") or []
    if not moving:
        return ranges
    rows = [[f"{m.get('start')}-{m.get('end')}", m.get("source"), m.get("target")] for m in moving]
    return Group(ranges, table("moving", ["slots", "from", "to"], rows))


POLICY_COLUMNS = [
    "Enabled",
    "MinCount",
    "MaxCount",
    "Provider",
    "Engine",
    "Selector",
    "ScaleOutCount",
    "ScaleInCount",
]


def policies_table(data: dict[str, dict[str, Any]]) -> RenderableType:
    rows = [
        [name, *(p.get(c) for c in POLICY_COLUMNS), ", ".join(p.get("Checks", {}))]
        for name, p in data.items()
    ]
    return table("policies", ["Class", *POLICY_COLUMNS, "Checks"], rows)


def policy_table(data: dict[str, Any]) -> RenderableType:
    return fields(f"policy {data.get('Class') or ''}".strip(), data)


# ---- genisys, the memcache manager, the broker --------------------------------------


def computes_table(data: list[dict[str, Any]]) -> RenderableType:
    return table("computes", ["name", "connector"], [[c["name"], c["connector"]] for c in data])


def compute_table(data: dict[str, Any]) -> RenderableType:
    return computes_table([data])


def service_table(data: dict[str, Any]) -> RenderableType:
    return fields(f"service {data.get('service')}", data)


def cache_table(data: dict[str, Any]) -> RenderableType:
    return fields("cache pool (memcache manager)", data)


def clusters_table(data: list[dict[str, Any]]) -> RenderableType:
    rows = [
        [
            c.get("name"),
            c.get("node_number"),
            c.get("node_number_with_slots"),
            c.get("is_migrating"),
        ]
        for c in data
    ]
    return table("clusters", ["name", "nodes", "nodes with slots", "migrating"], rows)


def _slot_ranges(node: dict[str, Any]) -> str:
    parts = []
    for entry in node.get("slots", []):
        ranges = " ".join(f"{a}-{b}" for a, b in entry.get("range_list", []))
        tag = entry.get("tag")
        if isinstance(tag, dict):
            kind = next(iter(tag), "")
            meta = tag.get(kind, {})
            peer = meta.get("dst_node_address") if kind == "Migrating" else None
            peer = peer or meta.get("src_node_address")
            ranges += f" ({kind.lower()} {'to' if kind == 'Migrating' else 'from'} {peer})"
        parts.append(ranges)
    return "; ".join(parts)


def cluster_table(data: dict[str, Any]) -> RenderableType:
    cluster = data.get("cluster") or {}
    rows = [
        [
            n.get("address"),
            n.get("proxy_address"),
            (n.get("repl") or {}).get("role"),
            _slot_ranges(n),
        ]
        for n in cluster.get("nodes", [])
    ]
    title = f"cluster {cluster.get('name')}, epoch {cluster.get('epoch')}"
    return table(title, ["node", "proxy", "role", "slots"], rows)
