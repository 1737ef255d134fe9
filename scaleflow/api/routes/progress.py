"""scaleflow's own read of an operation's progress: the slots and keys its migrations
moved so far, for ``scaleflow scale ... --wait``.

The numbers come from queries (``OperationBase.migrations`` names the migration
children, ``SlotMigrationWorkflow.progress`` counts each one's finished moves), so
reading them adds nothing to any history. It answers in the ``/v1/scale`` routes'
format, ``{"Error", "Code"}``: 404 for an unknown or malformed id, as the status route.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from temporalio.client import Client, RPCTimeoutOrCancelledError, WorkflowQueryFailedError
from temporalio.service import RPCError, RPCStatusCode

from scaleflow.api.deps import ClientDep, EventsDep
from scaleflow.api.events import CLOSED
from scaleflow.api.limits import retried
from scaleflow.api.schemas.common import OPERATION_ID_EXAMPLE
from scaleflow.api.schemas.errors import ChemtrailError, common_errors, error_docs
from scaleflow.core.errors import ErrorKind, ScaleflowError
from scaleflow.core.migration_io import OperationProgress, SlotMigrationProgress
from scaleflow.workflows.data_clear import DataClearWorkflow
from scaleflow.workflows.migration import SlotMigrationWorkflow
from scaleflow.workflows.operation import OperationBase
from scaleflow.workflows.rollout import ConfigRolloutWorkflow
from scaleflow.workflows.scale_in import ScaleInWorkflow
from scaleflow.workflows.scale_out import ScaleOutWorkflow

router = APIRouter(tags=["scaleflow"], responses=common_errors(ChemtrailError))
PROGRESS_EXAMPLE = {
    "status": "in-progress",
    "slots_done": 4096,
    "slots_total": 8192,
    "keys_moved": 120345,
    "details": "4096 of 8192 slots and 120345 keys moved",
    "migrations": ["036e4bd6-8f7d-4a8c-bf90-790790bbdc2a/migration-1"],
}

# The operations that may run slot migrations (they answer the ``migrations`` query);
# broker and genisys operations move no memcached slots.
MIGRATING_TYPES = frozenset(
    cls.__name__
    for cls in (ScaleOutWorkflow, ScaleInWorkflow, ConfigRolloutWorkflow, DataClearWorkflow)
)
# A closed workflow's query is answered by a worker replaying its history: bounded, so
# that a stack without a worker answers 503 (the app's handler) rather than hanging.
QUERY_TIMEOUT = timedelta(seconds=10)
# Closed operations' progress never changes: kept, so that polling does not replay.
CACHE_SIZE = 1000
# The SDK's built-in query: a workflow's summary, details and current details.
METADATA_QUERY = "__temporal_workflow_metadata"
# The answer before a migration child has started: there is nothing to count yet.
NOT_STARTED = (RPCStatusCode.NOT_FOUND, RPCStatusCode.FAILED_PRECONDITION)


def _cache(request: Request) -> OrderedDict[str, OperationProgress]:
    cache: OrderedDict[str, OperationProgress] | None = getattr(
        request.app.state, "progress_cache", None
    )
    if cache is None:
        cache = request.app.state.progress_cache = OrderedDict()
    return cache


async def _query(client: Client, workflow_id: str, query: Any) -> Any | None:
    """The query's answer; None for a workflow that does not exist (yet)."""
    handle = client.get_workflow_handle(workflow_id)
    try:
        return await retried(workflow_id, lambda: handle.query(query, rpc_timeout=QUERY_TIMEOUT))
    except RPCError as exc:
        if exc.status in NOT_STARTED:
            return None
        raise


async def migration_ids(client: Client, op_id: str) -> list[str]:
    try:
        desc = await client.get_workflow_handle(op_id).describe()
    except RPCError as exc:
        if exc.status in NOT_STARTED:
            return []
        raise
    if desc.workflow_type not in MIGRATING_TYPES:
        return []
    ids: list[str] | None = await _query(client, op_id, OperationBase.migrations)
    return ids or []


async def current_details(client: Client, op_id: str) -> str:
    """What the running operation says it is doing (``workflow.set_current_details``,
    e.g. a drain's open connections); blank when it says nothing or cannot answer."""
    try:
        meta = await _query(client, op_id, METADATA_QUERY)
    except (RPCError, WorkflowQueryFailedError, RPCTimeoutOrCancelledError):
        return ""  # the numbers above still answer
    return str(getattr(meta, "current_details", "") or "")


def details(
    status: str, parts: list[SlotMigrationProgress], done: int, total: int, live: str = ""
) -> str:
    if live:
        return live
    if not parts:
        return "no slot migration" + ("" if status in CLOSED else " yet")
    keys = sum(p.keys_moved for p in parts)
    runs = "" if len(parts) == 1 else f" in {len(parts)} migrations"
    return f"{done} of {total} slots and {keys} keys moved{runs}"


@router.get(
    "/v1/scale/progress/{op_id}",
    response_model=OperationProgress,
    responses={
        200: {"content": {"application/json": {"example": PROGRESS_EXAMPLE}}},
        **error_docs(ChemtrailError, {404: "No such operation (or a malformed ID)"}),
    },
)
async def read_progress(
    op_id: Annotated[str, Path(description="An operation's ID", examples=[OPERATION_ID_EXAMPLE])],
    request: Request,
    client: ClientDep,
    events: EventsDep,
) -> OperationProgress:
    """Slots and keys the operation's slot migrations moved so far, summed."""
    cache = _cache(request)
    cached = cache.get(op_id)
    if cached is not None:
        return cached
    doc = await events.get(op_id)  # None for a malformed id too
    if doc is None:
        raise ScaleflowError(ErrorKind.NOT_FOUND, f"no scaling event with ID {op_id!r}")
    ids = await migration_ids(client, op_id)
    query = SlotMigrationWorkflow.progress
    answers = await asyncio.gather(*(_query(client, i, query) for i in ids))
    found = [(i, p) for i, p in zip(ids, answers, strict=True) if p is not None]
    parts: list[SlotMigrationProgress] = [p for _, p in found]
    # While it runs, the operation's own words on what it does now (a drain, after its
    # slots moved) come before the slot count.
    live = "" if doc.status in CLOSED else await current_details(client, op_id)
    done = sum(p.slots_done for p in parts)
    total = sum(p.slots_total for p in parts)
    progress = OperationProgress(
        status=doc.status,
        slots_done=done,
        slots_total=total,
        keys_moved=sum(p.keys_moved for p in parts),
        details=details(doc.status, parts, done, total, live),
        migrations=[i for i, _ in found],
    )
    if doc.status in CLOSED:
        cache[op_id] = progress
        while len(cache) > CACHE_SIZE:
            cache.popitem(last=False)
    return progress
