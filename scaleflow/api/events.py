"""Scaling events, read from operation histories. Closed histories never change,
so their documents are cached; only running operations are read again."""

from __future__ import annotations

import asyncio
import uuid
from collections import OrderedDict
from datetime import UTC, datetime, timedelta

from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from scaleflow.core.events import build_scaling_event, child_ids
from scaleflow.core.models import CONTROL_SOURCE, ScalingEvent
from scaleflow.workflows import attributes

OPERATION_TYPES = (
    "ScaleOutWorkflow",
    "ScaleInWorkflow",
    "ConfigRolloutWorkflow",
    "DataClearWorkflow",
    "BrokerOperationWorkflow",
    "ServiceScaleWorkflow",
)
SURFACE_SOURCE = "chemtrail"
CLOSED = frozenset({"success", "failed", "cancelled"})


def is_operation_id(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


# Visibility may show a just-started execution a little late: look back this far.
LIST_OVERLAP = timedelta(seconds=5)


def in_chemtrail_words(doc: ScalingEvent) -> ScalingEvent:
    """The scaling-event document is chemtrail's: scaleflow's own steps carry the
    Source chemtrail gave its own."""
    for item in doc.events:
        if item.source == CONTROL_SOURCE:
            item.source = SURFACE_SOURCE
    return doc


def _stamp(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class EventStore:
    """Builds documents from histories; keeps an index of recent operations.

    The first listing reads every operation within the retention window from
    visibility; later ones ask only for operations started since (with an
    overlap), re-read only those still running, and join cached JSON for the rest.
    """

    def __init__(self, client: Client, retention: timedelta, cache_size: int = 100_000) -> None:
        self.client = client
        self.retention = retention
        self.cache_size = cache_size
        self._closed: OrderedDict[str, ScalingEvent] = OrderedDict()
        self._json: dict[str, bytes] = {}
        self._index: dict[str, str] = {}  # operation id -> pool
        self._synced: datetime | None = None
        self._sync_lock = asyncio.Lock()
        self._reads = asyncio.Semaphore(32)

    async def get(self, op_id: str) -> ScalingEvent | None:
        if not is_operation_id(op_id):
            return None
        cached = self._closed.get(op_id)
        if cached is not None:
            return cached
        history = await self._history(op_id)
        if history is None:
            return None
        children = [await self._history(c) for c in child_ids(history)]
        doc = build_scaling_event(
            history, self.client.data_converter.payload_converter, [c for c in children if c]
        )
        if not doc.events:
            return None
        doc = in_chemtrail_words(doc)
        if doc.status in CLOSED:
            self._remember(op_id, doc)
        return doc

    async def _history(self, workflow_id: str) -> list[HistoryEvent] | None:
        async with self._reads:
            try:
                history = await self.client.get_workflow_handle(workflow_id).fetch_history()
            except RPCError as exc:
                if exc.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.INVALID_ARGUMENT):
                    return None
                raise
        return list(history.events)

    def _remember(self, op_id: str, doc: ScalingEvent) -> None:
        self._closed[op_id] = doc
        self._json[op_id] = doc.model_dump_json(by_alias=True).encode()
        while len(self._closed) > self.cache_size:
            old, _ = self._closed.popitem(last=False)
            self._json.pop(old, None)

    async def _sync(self) -> None:
        """Bring the index up to date with visibility."""
        async with self._sync_lock:
            now = datetime.now(UTC)
            types = ", ".join(f"'{t}'" for t in OPERATION_TYPES)
            if self._synced is None:
                cutoff = _stamp(now - self.retention)
                query = (
                    f"WorkflowType IN ({types}) AND "
                    f"(ExecutionStatus = 'Running' OR CloseTime > '{cutoff}')"
                )
            else:
                since = _stamp(self._synced - LIST_OVERLAP)
                query = f"WorkflowType IN ({types}) AND StartTime > '{since}'"
            async for wf in self.client.list_workflows(query, page_size=1000):
                pool = wf.typed_search_attributes.get(attributes.POOL) or ""
                self._index[wf.id] = pool
            self._synced = now

    async def operation_ids(self, pool: str | None = None) -> list[str]:
        await self._sync()
        return [i for i, p in self._index.items() if pool is None or p == pool]

    def pool_of(self, op_id: str) -> str:
        """The pool (ScaleflowPool) of a listed operation; "" if it is not listed."""
        return self._index.get(op_id, "")

    async def _recent_docs(self, pool: str | None) -> list[tuple[str, ScalingEvent]]:
        ids = await self.operation_ids(pool)
        docs = await asyncio.gather(*(self.get(i) for i in ids))
        cutoff_ns = int((datetime.now(UTC) - self.retention).timestamp() * 1e9)
        found = []
        for op_id, doc in zip(ids, docs, strict=True):
            if doc is None or (doc.status in CLOSED and doc.last_update < cutoff_ns):
                self._index.pop(op_id, None)  # gone, or past retention: not listed again
                continue
            found.append((op_id, doc))
        found.sort(key=lambda kv: kv[1].events[0].timestamp)
        return found

    async def recent(self, pool: str | None = None) -> dict[str, ScalingEvent]:
        return dict(await self._recent_docs(pool))

    async def recent_json(self, pool: str | None = None) -> bytes:
        """The listing as JSON; closed documents are joined from their cached JSON."""
        parts = []
        for op_id, doc in await self._recent_docs(pool):
            body = self._json.get(op_id) or doc.model_dump_json(by_alias=True).encode()
            parts.append(b'"' + op_id.encode() + b'":' + body)
        return b"{" + b",".join(parts) + b"}"
