"""Calls into pool entity workflows."""

from __future__ import annotations

from typing import Any

from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from scaleflow.api.deps import execute_update, update_with_start
from scaleflow.api.limits import retried
from scaleflow.core.errors import ErrorKind, ScaleflowError
from scaleflow.core.models import PoolInit, PoolView, pool_workflow_id, valid_name
from scaleflow.core.settings import Settings
from scaleflow.workflows.pool import PoolWorkflow


def pool_handle(client: Client, name: str) -> WorkflowHandle[Any, Any]:
    if not valid_name(name):
        raise ScaleflowError(ErrorKind.NOT_FOUND, f"no pool named {name!r}")
    return client.get_workflow_handle(pool_workflow_id(name))


async def call_pool(
    client: Client, name: str, update: Any, arg: Any = None, *, missing: ErrorKind
) -> Any:
    """Run an update on an existing pool; a pool that does not exist is ``missing``."""
    if not valid_name(name):
        raise ScaleflowError(missing, _missing_message(name, missing))
    try:
        return await execute_update(client, pool_workflow_id(name), update, arg)
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise ScaleflowError(missing, _missing_message(name, missing)) from exc
        raise


def _missing_message(name: str, kind: ErrorKind) -> str:
    if kind == ErrorKind.NO_POLICY:
        return f"no scaling policy found for class {name}"
    return f"no pool named {name}"


async def upsert_pool(
    client: Client, settings: Settings, init: PoolInit, update: Any, arg: Any = None
) -> Any:
    """Update-with-start: creates the pool's entity workflow if it is not running."""
    return await update_with_start(
        client,
        settings,
        run=PoolWorkflow.run,
        init=init,
        workflow_id=pool_workflow_id(init.config.name),
        update=update,
        arg=arg,
    )


async def query_pool(client: Client, name: str, query: Any) -> Any:
    """A query of an existing pool; 404 (``no pool named``) when there is none."""
    try:
        handle = pool_handle(client, name)
        return await retried(handle.id, lambda: handle.query(query))
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise ScaleflowError(ErrorKind.NOT_FOUND, f"no pool named {name!r}") from exc
        raise


async def pool_view(client: Client, name: str) -> PoolView | None:
    try:
        handle = pool_handle(client, name)
        return await retried(handle.id, lambda: handle.query(PoolWorkflow.view))
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
    except ScaleflowError:
        return None


def running_query(workflow_type: str, task_queue: str) -> str:
    """The visibility query for the running workflows of a type on one task queue."""
    queue = task_queue.replace("\\", "\\\\").replace("'", "\\'")
    return (
        f"WorkflowType = '{workflow_type}' AND ExecutionStatus = 'Running' "
        f"AND TaskQueue = '{queue}'"
    )


async def pool_views(client: Client, task_queue: str) -> list[PoolView]:
    """The running pools this deployment's workers serve (another deployment on the same
    namespace has its own task queue, and its own pools)."""
    views = []
    query = running_query("PoolWorkflow", task_queue)
    async for wf in client.list_workflows(query):
        view = await pool_view(client, wf.id.removeprefix("pool/"))
        if view is not None:
            views.append(view)
    return sorted(views, key=lambda v: v.name)
