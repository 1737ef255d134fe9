"""FastAPI dependencies, and the one path by which the API sends workflow updates.

Every update goes through ``execute_update`` or ``update_with_start``: both take a
turn of the entity's ``UpdateLimiter`` and carry a stable update id, so that an update
Temporal refused or aborted can be sent again as the same update.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Annotated, Any

from fastapi import Depends, Header, Request
from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError

from scaleflow.api.events import EventStore
from scaleflow.api.limits import limiter_for
from scaleflow.core.errors import ErrorKind, ScaleflowError
from scaleflow.core.settings import Settings


def get_client(request: Request) -> Client:
    return request.app.state.client


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_events(request: Request) -> EventStore:
    return request.app.state.events


ClientDep = Annotated[Client, Depends(get_client)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
EventsDep = Annotated[EventStore, Depends(get_events)]
# How long an aborted update's result is waited for before the request is answered busy.
OUTCOME_TIMEOUT = timedelta(seconds=10)
RequestId = Annotated[str | None, Header(alias="X-Request-ID", max_length=200)]


def update_error(exc: WorkflowUpdateFailedError) -> ScaleflowError:
    """A rejected update, as the error the API answers with."""
    cause = exc.cause
    if isinstance(cause, ApplicationError) and cause.type:
        try:
            kind = ErrorKind(cause.type)
        except ValueError:
            kind = ErrorKind.INVALID
        return ScaleflowError(kind, cause.message, code=cause.type, details=cause.details)
    return ScaleflowError(ErrorKind.INVALID, str(cause or exc))


def update_id(update: Any, arg: Any) -> str:
    """The update's id: from the request id when the argument carries one (a client's
    repeated request is then the same update to Temporal too), else a fresh uuid. The
    update's name keeps two kinds of update under one request id apart."""
    request_id = getattr(arg, "request_id", None)
    if isinstance(request_id, str) and request_id:
        name = update if isinstance(update, str) else getattr(update, "__name__", "update")
        return f"{name}:{request_id}"
    return str(uuid.uuid4())


def _args(arg: Any) -> list[Any]:
    return [] if arg is None else [arg]


def outcome_of(handle: WorkflowHandle[Any, Any], uid: str) -> Callable[[], Awaitable[Any]]:
    """The result of update ``uid`` if the workflow took it (NOT_FOUND if it did not)."""

    async def outcome() -> Any:
        return await handle.get_update_handle(uid).result(rpc_timeout=OUTCOME_TIMEOUT)

    return outcome


async def execute_update(client: Client, workflow_id: str, update: Any, arg: Any = None) -> Any:
    """Run an update on a running workflow; a rejected update raises ``ScaleflowError``.

    ``RPCError`` (NOT_FOUND for a workflow that is not running) is left to the caller."""
    handle = client.get_workflow_handle(workflow_id)
    uid = update_id(update, arg)

    async def attempt() -> Any:
        return await handle.execute_update(update, args=_args(arg), id=uid)

    try:
        return await limiter_for(client).run(workflow_id, attempt, outcome_of(handle, uid))
    except WorkflowUpdateFailedError as exc:
        raise update_error(exc) from exc


def entity_summary(workflow_id: str) -> str:
    """ "pool/default" -> "pool default: the entity that queues its operations"."""
    kind, _, name = workflow_id.partition("/")
    return f"{kind} {name}: the entity that queues its operations"


async def update_with_start(
    client: Client,
    settings: Settings,
    *,
    run: Any,
    init: Any,
    workflow_id: str,
    update: Any,
    arg: Any = None,
) -> Any:
    """Update-with-start: ``run(init)`` starts the entity ``workflow_id`` if it is not
    running, then the update runs on it."""
    uid = update_id(update, arg)

    async def attempt() -> Any:
        # A with-start operation may be used once only: each attempt builds its own.
        op = WithStartWorkflowOperation(
            run,
            init,
            id=workflow_id,
            task_queue=settings.task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            static_summary=entity_summary(workflow_id),
        )
        return await client.execute_update_with_start_workflow(
            update, args=_args(arg), start_workflow_operation=op, id=uid
        )

    handle = client.get_workflow_handle(workflow_id)
    try:
        return await limiter_for(client).run(workflow_id, attempt, outcome_of(handle, uid))
    except WorkflowUpdateFailedError as exc:
        raise update_error(exc) from exc
