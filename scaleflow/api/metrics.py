"""``GET /metrics``: the API's figures in the Prometheus text format.

The API stays stateless: a scrape reads operations from Temporal (the EventStore
that ``/v1/scale/status`` reads) and asks every pool for its view and statistics.
Counters must only go up within a process, so they count what *happened* since this
process started (an operation started, ended, moved keys), each event once, however
many scrapes see it; what merely *is* (pool sizes, running operations, readings) is a
gauge, rebuilt at every scrape so that a pool that went away leaves no stale series.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta

from fastapi import APIRouter, FastAPI, Request, Response
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.registry import Collector
from pydantic import BaseModel
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from temporalio.client import Client

from scaleflow.api.events import CLOSED, EventStore
from scaleflow.api.temporal import running_query
from scaleflow.core.autoscale import StatsSample
from scaleflow.core.models import PoolView, ScalingEvent
from scaleflow.core.settings import Settings
from scaleflow.workflows.pool import PoolWorkflow

log = logging.getLogger(__name__)

# A scrape is bounded: the operations' part and each pool's queries have deadlines;
# what misses its deadline is left out of this scrape and counted as a failure.
# Together (the two parts run side by side) they stay under Prometheus' default 10 s.
OPERATIONS_TIMEOUT_S = 8.0
POOL_LIST_TIMEOUT_S = 3.0
POOL_QUERY_TIMEOUT_S = 2.5
POOL_QUERY_CONCURRENCY = 16
# Operation ids already counted, kept to count each once; bounded like the event cache.
SEEN_LIMIT = 100_000

# Operations last seconds (a no-op) to hours (a big migration under a rate cap).
DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, float("inf"))
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, float("inf"))

# "migrated slots 0-8191: 1,234 keys ..." (memcached) or "migrated slots 0-99, 200: ..."
# (redis): the line an activity writes when a range is done.
MIGRATED_RE = re.compile(r"^migrated slots (?P<ranges>[0-9][0-9, -]*): (?P<keys>[0-9,]+) keys")
UNMATCHED_ROUTE = "unmatched"
# Any token is a method to the server: others are one label value, not one each.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

STATUS_LABEL = {"success": "succeeded", "failed": "failed", "cancelled": "cancelled"}


def moved_by(message: str) -> tuple[int, int] | None:
    """(slots, keys) a "migrated slots" event line reports, or None for other lines."""
    m = MIGRATED_RE.match(message)
    if m is None:
        return None
    slots = 0
    for part in m["ranges"].split(","):
        lo, _, hi = part.strip().partition("-")
        slots += int(hi or lo) - int(lo) + 1
    return slots, int(m["keys"].replace(",", ""))


class PoolReading(BaseModel):
    """One pool's figures from one scrape; ``stats`` is None if the pool has none yet."""

    view: PoolView
    stats: StatsSample | None = None


@dataclass
class _Seen:
    """What of one operation has been counted already."""

    started: bool = False
    closed: bool = False
    slots: int = 0
    keys: int = 0


@dataclass
class Snapshot:
    """The gauges of the last scrape."""

    pools: list[PoolReading] = field(default_factory=list)
    running: dict[tuple[str, str], int] = field(default_factory=dict)


class ScaleflowMetrics:
    """The API's metrics; one per app, each with its own registry (tests run several
    apps in one process, and the default registry is global)."""

    def __init__(self, started_ns: int | None = None) -> None:
        # Counters count only what happened from here on, so a restarted API does not
        # count the operations of the retention window again (a spurious increase).
        self.started_ns = started_ns if started_ns is not None else time.time_ns()
        self.registry = CollectorRegistry(auto_describe=True)
        self.snapshot = Snapshot()
        self._seen: OrderedDict[str, _Seen] = OrderedDict()
        self._lock = asyncio.Lock()
        r, op = self.registry, ("kind", "pool")
        self.started = Counter(
            "scaleflow_operations_started",
            "Operations started since this API process started, counted once each when a "
            "scrape first sees them. kind is the operation's Direction (out, in, rollout, "
            "clear, or the broker's); pool is its pool, service/NAME or broker/cluster.",
            op,
            registry=r,
        )
        self.succeeded = Counter(
            "scaleflow_operations_succeeded",
            "Operations that ended in success since this API process started.",
            op,
            registry=r,
        )
        self.failed = Counter(
            "scaleflow_operations_failed",
            "Operations that ended failed (failed, timed out or terminated) since this API "
            "process started.",
            op,
            registry=r,
        )
        self.cancelled = Counter(
            "scaleflow_operations_cancelled",
            "Operations that ended cancelled since this API process started.",
            op,
            registry=r,
        )
        self._ended = {
            "succeeded": self.succeeded,
            "failed": self.failed,
            "cancelled": self.cancelled,
        }
        self.duration = Histogram(
            "scaleflow_operation_duration_seconds",
            "Start to end of the operations that ended since this API process started, "
            "by their outcome (status: succeeded, failed, cancelled).",
            (*op, "status"),
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.slots_moved = Counter(
            "scaleflow_slots_moved",
            "Slots whose keys an operation finished migrating since this API process "
            "started (from the operations' 'migrated slots' events).",
            op,
            registry=r,
        )
        self.keys_moved = Counter(
            "scaleflow_keys_moved",
            "Keys copied by finished slot migrations since this API process started.",
            op,
            registry=r,
        )
        self.pool_failures = Counter(
            "scaleflow_metrics_pool_query_failures",
            "Scrapes that left a pool out because its queries failed or timed out "
            '(pool="" : the list of pools itself could not be read).',
            ("pool",),
            registry=r,
        )
        self.operation_failures = Counter(
            "scaleflow_metrics_operation_read_failures",
            "Scrapes whose operation figures could not be read in time; their counters "
            "catch up at a later scrape.",
            registry=r,
        )
        self.http_requests = Counter(
            "scaleflow_http_requests",
            "HTTP requests answered, by method, route template (unmatched: no route) and "
            "status code.",
            ("method", "route", "status"),
            registry=r,
        )
        self.http_duration = Histogram(
            "scaleflow_http_request_duration_seconds",
            "Time to answer HTTP requests, by method and route template.",
            ("method", "route"),
            buckets=HTTP_BUCKETS,
            registry=r,
        )
        r.register(_GaugeCollector(self))

    # ---- a scrape -----------------------------------------------------------

    async def render(self, client: Client, events: EventStore, task_queue: str) -> bytes:
        # One scrape at a time: the counting below must not see an operation twice.
        async with self._lock:
            await asyncio.gather(
                self._refresh_operations(events), self._refresh_pools(client, task_queue)
            )
            return generate_latest(self.registry)

    async def _refresh_operations(self, events: EventStore) -> None:
        try:
            docs = await asyncio.wait_for(events.recent(), OPERATIONS_TIMEOUT_S)
        except Exception as exc:  # a slow or failing Temporal must not break the scrape
            log.warning("metrics: operations not read: %r", exc)
            self.operation_failures.inc()
            return
        running: dict[tuple[str, str], int] = {}
        for op_id, doc in docs.items():
            labels = (doc.direction, events.pool_of(op_id))
            self._count(op_id, doc, labels)
            if doc.status not in CLOSED:
                running[labels] = running.get(labels, 0) + 1
        self.snapshot.running = running
        self._forget(docs)

    def _count(self, op_id: str, doc: ScalingEvent, labels: tuple[str, str]) -> None:
        seen = self._seen.get(op_id)
        if seen is None:
            seen = self._seen[op_id] = _Seen()
        begin = doc.events[0].timestamp if doc.events else doc.last_update
        if not seen.started and begin >= self.started_ns:
            self.started.labels(*labels).inc()
        seen.started = True
        # Moves made since this process started, counted as they appear (a running
        # operation's migrations show up one range at a time).
        slots = keys = 0
        for item in doc.events:
            moved = moved_by(item.message) if item.timestamp >= self.started_ns else None
            if moved is not None:
                slots, keys = slots + moved[0], keys + moved[1]
        if slots > seen.slots:
            self.slots_moved.labels(*labels).inc(slots - seen.slots)
            seen.slots = slots
        if keys > seen.keys:
            self.keys_moved.labels(*labels).inc(keys - seen.keys)
            seen.keys = keys
        if doc.status in CLOSED and not seen.closed:
            seen.closed = True
            if doc.last_update >= self.started_ns:
                status = STATUS_LABEL[doc.status]
                self._ended[status].labels(*labels).inc()
                seconds = max(doc.last_update - begin, 0) / 1e9
                self.duration.labels(*labels, status).observe(seconds)

    def _forget(self, listed: dict[str, ScalingEvent]) -> None:
        """Drop ended operations the store no longer lists (it never lists them again),
        and the oldest entries beyond the bound."""
        for op_id in [i for i, s in self._seen.items() if s.closed and i not in listed]:
            del self._seen[op_id]
        while len(self._seen) > SEEN_LIMIT:
            self._seen.popitem(last=False)

    async def _refresh_pools(self, client: Client, task_queue: str) -> None:
        query = running_query("PoolWorkflow", task_queue)
        timeout = timedelta(seconds=POOL_LIST_TIMEOUT_S)

        async def names() -> list[str]:
            return [
                wf.id.removeprefix("pool/")
                async for wf in client.list_workflows(query, rpc_timeout=timeout)
            ]

        try:
            pools = await asyncio.wait_for(names(), POOL_LIST_TIMEOUT_S)
        except Exception as exc:
            log.warning("metrics: pools not listed: %r", exc)
            self.pool_failures.labels("").inc()
            self.snapshot.pools = []
            return
        limit = asyncio.Semaphore(POOL_QUERY_CONCURRENCY)
        readings = await asyncio.gather(*(self._read_pool(client, n, limit) for n in pools))
        self.snapshot.pools = sorted(
            (r for r in readings if r is not None), key=lambda r: r.view.name
        )

    async def _read_pool(
        self, client: Client, name: str, limit: asyncio.Semaphore
    ) -> PoolReading | None:
        handle = client.get_workflow_handle(f"pool/{name}")
        timeout = timedelta(seconds=POOL_QUERY_TIMEOUT_S)

        async def both() -> PoolReading:
            view: PoolView = await handle.query(PoolWorkflow.view, rpc_timeout=timeout)
            samples: list[StatsSample] = await handle.query(PoolWorkflow.stats, rpc_timeout=timeout)
            return PoolReading(view=view, stats=samples[-1] if samples else None)

        async with limit:
            try:
                # Two queries, each bounded: the pool's part of the scrape is too.
                return await asyncio.wait_for(both(), 2 * POOL_QUERY_TIMEOUT_S)
            except Exception as exc:  # one pool that cannot answer is skipped, counted
                log.warning("metrics: pool %s not read: %r", name, exc)
                self.pool_failures.labels(name).inc()
                return None

    # ---- HTTP ---------------------------------------------------------------

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.http_requests.labels(method, route, str(status)).inc()
        self.http_duration.labels(method, route).observe(seconds)


def _gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels)


class _GaugeCollector(Collector):
    """The gauges, from the last scrape's snapshot (series of a pool that went away
    disappear with it)."""

    def __init__(self, metrics: ScaleflowMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> Iterable[Metric]:
        # Nothing to describe ahead: the registry must not call collect() to learn the
        # names (that would read a snapshot that does not exist yet).
        return []

    def collect(self) -> Iterator[Metric]:
        snap = self.metrics.snapshot
        running = _gauge(
            "scaleflow_operations_running",
            "Operations started and not yet ended, by kind and pool.",
            ["kind", "pool"],
        )
        for (kind, pool), n in sorted(snap.running.items()):
            running.add_metric([kind, pool], n)
        yield running
        yield from _pool_gauges(snap.pools)


# The per-pool gauges and their HELP; the autoscaler's readings are its pool's last
# statistics sample (what its rule reads), absent until the pool has one.
POOL_HELP: dict[str, str] = {
    "scaleflow_pool_size": "Nodes in the pool, in any state.",
    "scaleflow_pool_min_nodes": "The pool's lower bound (MinCount).",
    "scaleflow_pool_max_nodes": "The pool's upper bound (MaxCount).",
    "scaleflow_pool_queued_operations": "Operations queued or running on the pool.",
    "scaleflow_pool_enabled": "1 if the pool's policy is enabled.",
    "scaleflow_autoscaler_enabled": "1 if the miss-rate autoscaler is on (auto_mode).",
    "scaleflow_autoscaler_max_miss_rate_threshold": "Above this miss rate it grows the pool.",
    "scaleflow_autoscaler_min_miss_rate_threshold": "Below this miss rate it shrinks the pool.",
    "scaleflow_autoscaler_miss_rate": "Miss rate of the pool's last statistics sample.",
    "scaleflow_autoscaler_hit_rate": "Hit rate of the pool's last statistics sample.",
    "scaleflow_autoscaler_requests_per_minute": "Gets per minute in the last sample.",
    "scaleflow_autoscaler_items": "Items in the cache at the last sample.",
    "scaleflow_autoscaler_bytes": "Bytes of items in the cache at the last sample.",
    "scaleflow_autoscaler_sample_timestamp_seconds": "When the last sample was taken.",
}


def _pool_figures(r: PoolReading) -> dict[str, float]:
    cfg, auto, sample = r.view.config, r.view.autoscaler, r.stats
    figures = {
        "scaleflow_pool_size": len(r.view.nodes),
        "scaleflow_pool_min_nodes": cfg.min_count,
        "scaleflow_pool_max_nodes": cfg.max_count,
        "scaleflow_pool_queued_operations": len(r.view.queue),
        "scaleflow_pool_enabled": float(cfg.enabled),
        "scaleflow_autoscaler_enabled": float(auto.auto_mode),
        "scaleflow_autoscaler_max_miss_rate_threshold": auto.max_miss_rate_threshold,
        "scaleflow_autoscaler_min_miss_rate_threshold": auto.min_miss_rate_threshold,
    }
    if sample is not None:
        figures |= {
            "scaleflow_autoscaler_miss_rate": sample.miss_rate,
            "scaleflow_autoscaler_hit_rate": sample.hit_rate,
            "scaleflow_autoscaler_requests_per_minute": sample.requests_per_minute,
            "scaleflow_autoscaler_items": sample.items,
            "scaleflow_autoscaler_bytes": sample.bytes,
            "scaleflow_autoscaler_sample_timestamp_seconds": sample.at.timestamp(),
        }
    return {k: float(v) for k, v in figures.items()}


def _pool_gauges(pools: list[PoolReading]) -> Iterator[Metric]:
    figures = [(r.view.name, _pool_figures(r)) for r in pools]
    for name, doc in POOL_HELP.items():
        family = _gauge(name, doc, ["pool"])
        for pool, values in figures:
            if name in values:
                family.add_metric([pool], values[name])
        yield family
    nodes = _gauge("scaleflow_pool_nodes", "Nodes in the pool by state.", ["pool", "state"])
    info = _gauge(
        "scaleflow_pool_info", "1 for each pool, with its engine and provider.",
        ["pool", "engine", "provider"],
    )  # fmt: skip
    for reading in pools:
        view = reading.view
        by_state: dict[str, int] = {}
        for node in view.nodes:
            by_state[node.state.value] = by_state.get(node.state.value, 0) + 1
        for state, n in sorted(by_state.items()):
            nodes.add_metric([view.name, state], n)
        info.add_metric([view.name, view.config.engine.value, view.config.provider.value], 1)
    yield nodes
    yield info


# ---- wiring -------------------------------------------------------------------


class HttpMetricsMiddleware:
    """Counts every HTTP request by its route template (``/v1/pools/{name}``, never the
    raw path: one series per route, not per pool name or probe) and status."""

    def __init__(self, app: ASGIApp, metrics: ScaleflowMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # what the server answers if the app raises before responding
        begin = time.perf_counter()

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            # The router records the matched route in the (shared) scope.
            route = getattr(scope.get("route"), "path", None) or UNMATCHED_ROUTE
            method = scope["method"] if scope["method"] in METHODS else "OTHER"
            self.metrics.observe_request(method, route, status, time.perf_counter() - begin)


router = APIRouter(tags=["system"])


@router.get("/metrics", response_class=Response, include_in_schema=False)
async def prometheus_metrics(request: Request) -> Response:
    """The Prometheus text format (0.0.4, which every Prometheus reads)."""
    metrics: ScaleflowMetrics = request.app.state.metrics
    settings: Settings = request.app.state.settings
    body = await metrics.render(
        request.app.state.client, request.app.state.events, settings.task_queue
    )
    return Response(body, media_type=CONTENT_TYPE_PLAIN_0_0_4)


def install(app: FastAPI) -> ScaleflowMetrics:
    """The metrics, their middleware and ``GET /metrics`` on ``app``."""
    metrics = ScaleflowMetrics()
    app.state.metrics = metrics
    app.add_middleware(HttpMetricsMiddleware, metrics=metrics)
    app.include_router(router)
    return metrics
