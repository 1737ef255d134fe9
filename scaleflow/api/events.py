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
from scaleflow.core.models import ScalingEvent

OPERATION_TYPES = (
    "ScaleOutWorkflow",
    "ScaleInWorkflow",
    "ConfigRolloutWorkflow",
    "DataClearWorkflow",
    "ServiceScaleWorkflow",
)
CLOSED = frozenset({"success", "failed", "cancelled"})


def is_operation_id(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


class EventStore:
    def __init__(self, client: Client, retention: timedelta, cache_size: int = 100_000) -> None:
        self.client = client
        self.retention = retention
        self.cache_size = cache_size
        self._closed: OrderedDict[str, ScalingEvent] = OrderedDict()
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
        while len(self._closed) > self.cache_size:
            self._closed.popitem(last=False)

    async def operation_ids(self, pool: str | None = None) -> list[str]:
        cutoff = (datetime.now(UTC) - self.retention).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        types = ", ".join(f"'{t}'" for t in OPERATION_TYPES)
        query = (
            f"WorkflowType IN ({types}) AND (ExecutionStatus = 'Running' OR CloseTime > '{cutoff}')"
        )
        if pool is not None:
            query += f" AND ScaleflowPool = '{pool}'"
        return [wf.id async for wf in self.client.list_workflows(query, page_size=1000)]

    async def recent(self, pool: str | None = None) -> dict[str, ScalingEvent]:
        ids = await self.operation_ids(pool)
        docs = await asyncio.gather(*(self.get(i) for i in ids))
        found = {i: d for i, d in zip(ids, docs, strict=True) if d is not None}
        return dict(sorted(found.items(), key=lambda kv: kv[1].events[0].timestamp))
