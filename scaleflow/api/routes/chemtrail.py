"""The chemtrail surface: scale a client class out and in, policies, scaling events."""

from __future__ import annotations

import re
import time
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from scaleflow.api import errors
from scaleflow.api.deps import ClientDep, EventsDep, RequestId, SettingsDep
from scaleflow.api.events import OPERATION_TYPES, is_operation_id
from scaleflow.api.schemas.chemtrail import (
    POLICY_EXAMPLE,
    SCALING_EVENT_EXAMPLE,
    CancelAccepted,
    Health,
    Metrics,
    Policy,
    PolicyDeleted,
)
from scaleflow.api.schemas.common import (
    NAME_HELP,
    NAME_PATTERN,
    OPERATION_ID_EXAMPLE,
    OperationStarted,
    valid_name_whole,
)
from scaleflow.api.schemas.errors import ChemtrailError, common_errors, error_docs
from scaleflow.api.temporal import call_pool, pool_view, pool_views, upsert_pool
from scaleflow.core.errors import ErrorKind, ScaleflowError
from scaleflow.core.models import (
    OperationAccepted,
    OperationKind,
    OperationRequest,
    PolicyChange,
    PoolInit,
    ScalingEvent,
)
from scaleflow.workflows.pool import PoolWorkflow

router = APIRouter(tags=["chemtrail"], responses=common_errors(ChemtrailError))

# The seed's preconditions of a scaling (ORIGINALS: 422 and 412), and the queue's refusal.
SCALING_ERRORS = error_docs(
    ChemtrailError,
    {
        409: "The class's queue refused the operation (e.g. it conflicts with one queued)",
        412: "The change would cross MinCount or MaxCount",
        422: "The class has no policy, its policy is disabled, it has no provider, or "
        "(scale-in) it has no nodes",
    },
)
NOT_FOUND = error_docs(ChemtrailError, {404: "No such scaling event (or a malformed ID)"})
ClientClass = Annotated[str, Path(description="The Nomad client node class (a pool)")]
OperationId = Annotated[str, Path(description="An operation's ID", examples=[OPERATION_ID_EXAMPLE])]

# The entity speaks neutral words; chemtrail calls a pool a client class.
_VOCABULARY = {
    r"\bpools?\b(?!/)": "class",  # not in a workflow id such as pool/web
    r"\bmax_count\b": "MaxCount",
    r"\bmin_count\b": "MinCount",
    r"\bprovider_config\b": "ProviderConfig",
}


def chemtrail_error(status: int, message: str) -> dict[str, Any]:
    """Chemtrail's ``{"Error", "Code"}``, in chemtrail's words."""
    for pattern, word in _VOCABULARY.items():
        message = re.sub(pattern, word, message)
    return errors.chemtrail_error(status, message)


async def submit(client: Client, name: str, kind: OperationKind, request_id: str | None) -> Any:
    req = OperationRequest(kind=kind, request_id=request_id or str(uuid.uuid4()))
    accepted: OperationAccepted = await call_pool(
        client, name, PoolWorkflow.submit, req, missing=ErrorKind.NO_POLICY
    )
    return JSONResponse({"ID": accepted.id}, status_code=201)


@router.post(
    "/v1/scale/out/{client_class}",
    status_code=201,
    response_model=OperationStarted,
    responses=SCALING_ERRORS,
)
async def scale_out(
    client_class: ClientClass, client: ClientDep, request_id: RequestId = None
) -> Any:
    """Start a scale-out of the class; 201 with the operation's ID."""
    return await submit(client, client_class, OperationKind.SCALE_OUT, request_id)


@router.post(
    "/v1/scale/in/{client_class}",
    status_code=201,
    response_model=OperationStarted,
    responses=SCALING_ERRORS,
)
async def scale_in(
    client_class: ClientClass, client: ClientDep, request_id: RequestId = None
) -> Any:
    """Start a drain-then-terminate of one node of the class; 201 with the ID."""
    return await submit(client, client_class, OperationKind.SCALE_IN, request_id)


@router.get(
    "/v1/scale/status",
    response_model=dict[str, ScalingEvent],
    responses={
        200: {
            "content": {
                "application/json": {"example": {OPERATION_ID_EXAMPLE: SCALING_EVENT_EXAMPLE}}
            }
        }
    },
)
async def list_events(
    events: EventsDep,
    pool: Annotated[
        str | None,
        Query(
            description="Only this class's events (a genisys service's: service/<name>)",
            json_schema_extra={"pattern": "^(service/)?" + NAME_PATTERN.removeprefix("^")},
        ),
    ] = None,
) -> Any:
    """Recent scaling events (within the retention window), keyed by operation ID."""
    # Genisys operations are filed under "service/<name>".
    if pool is not None and not valid_name_whole(pool.removeprefix("service/")):
        raise ScaleflowError(ErrorKind.INVALID, f"invalid pool name {pool!r}")
    body = await events.recent_json(pool)
    return Response(content=body, media_type="application/json")


@router.get(
    "/v1/scale/status/{op_id}",
    response_model=ScalingEvent,
    responses={
        200: {"content": {"application/json": {"example": SCALING_EVENT_EXAMPLE}}},
        **NOT_FOUND,
    },
)
async def read_event(op_id: OperationId, events: EventsDep) -> Any:
    doc = await events.get(op_id)
    if doc is None:
        raise ScaleflowError(ErrorKind.NOT_FOUND, f"no scaling event with ID {op_id!r}")
    return doc


@router.delete(
    "/v1/scale/status/{op_id}",
    status_code=202,
    response_model=CancelAccepted,
    responses={
        **NOT_FOUND,
        **error_docs(ChemtrailError, {409: "The operation has already finished"}),
    },
)
async def cancel_operation(op_id: OperationId, client: ClientDep) -> Any:
    """Cancel a running operation; it compensates, then its status becomes cancelled."""
    unknown = ScaleflowError(ErrorKind.NOT_FOUND, f"no scaling event with ID {op_id!r}")
    if not is_operation_id(op_id):
        raise unknown
    handle = client.get_workflow_handle(op_id)
    try:
        desc = await handle.describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise ScaleflowError(
                ErrorKind.NOT_FOUND, f"no scaling event with ID {op_id!r}"
            ) from exc
        raise
    if desc.workflow_type not in OPERATION_TYPES:
        raise ScaleflowError(ErrorKind.NOT_FOUND, f"no scaling event with ID {op_id!r}")
    if desc.status != WorkflowExecutionStatus.RUNNING:
        raise ScaleflowError(ErrorKind.CONFLICT, f"operation {op_id} has already finished")
    await handle.cancel()
    return {"ID": op_id, "Status": "cancelling"}


# ---- policies ---------------------------------------------------------------


@router.get(
    "/v1/policies",
    responses={
        200: {"content": {"application/json": {"example": {"high-memory": POLICY_EXAMPLE}}}}
    },
)
async def list_policies(client: ClientDep, settings: SettingsDep) -> dict[str, Policy]:
    views = await pool_views(client, settings.task_queue)
    return {v.name: Policy.from_config(v.config) for v in views if v.has_policy}


@router.get(
    "/v1/policy/{client_class}",
    responses=error_docs(ChemtrailError, {404: "The class has no policy"}),
)
async def read_policy(client_class: ClientClass, client: ClientDep) -> Policy:
    view = await pool_view(client, client_class)
    if view is None or not view.has_policy:
        raise ScaleflowError(
            ErrorKind.NOT_FOUND, f"no scaling policy found for class {client_class}"
        )
    return Policy.from_config(view.config)


@router.put(
    "/v1/policy/{client_class}",
    responses=error_docs(
        ChemtrailError,
        {
            400: "A body that is not a policy, MinCount above MaxCount, aws-autoscaling "
            "without asg-name, a Class other than the path's, or an invalid class name",
            409: "The change conflicts with the class's nodes (e.g. a new provider while "
            "it has nodes)",
        },
    ),
)
async def write_policy(
    client_class: Annotated[
        str,
        Path(
            description=f"The class: {NAME_HELP}; the body's Class, if given, must be the same",
            json_schema_extra={"pattern": NAME_PATTERN},
        ),
    ],
    policy: Annotated[Policy, Body()],
    client: ClientDep,
    settings: SettingsDep,
) -> Policy:
    """Create or replace the class's policy (and its pool)."""
    if not valid_name_whole(client_class):
        raise ScaleflowError(
            ErrorKind.INVALID, f"invalid class {client_class!r}: use 1-64 of [A-Za-z0-9@._-]"
        )
    if policy.Class not in (None, client_class):
        raise ScaleflowError(
            ErrorKind.INVALID, f"policy Class {policy.Class!r} does not match path {client_class!r}"
        )
    current = await pool_view(client, client_class)
    base = current.config if current else settings.new_pool(client_class)
    config = policy.to_config(client_class, base)
    view = await upsert_pool(
        client,
        settings,
        PoolInit(config=config),
        PoolWorkflow.set_policy,
        PolicyChange(config=config),
    )
    return Policy.from_config(view.config)


@router.delete(
    "/v1/policy/{client_class}",
    response_model=PolicyDeleted,
    responses=error_docs(
        ChemtrailError, {404: "No such class", 422: "The class has no policy any more"}
    ),
)
async def delete_policy(client_class: ClientClass, client: ClientDep) -> dict[str, str]:
    await call_pool(client, client_class, PoolWorkflow.remove_policy, missing=ErrorKind.NOT_FOUND)
    return {"Class": client_class, "Status": "deleted"}


# ---- system -----------------------------------------------------------------


@router.get(
    "/v1/system/health",
    response_model=Health,
    responses={503: {"model": Health, "description": "Temporal does not answer"}},
)
async def health(client: ClientDep) -> Any:
    try:
        await client.service_client.check_health()
    except RPCError as exc:
        body = {"Status": "unhealthy", "Temporal": exc.message}
        return JSONResponse(body, status_code=503)
    return {"Status": "ok", "Temporal": "ok"}


@router.get("/v1/system/metrics", response_model=Metrics)
async def metrics(
    request: Request, client: ClientDep, events: EventsDep, settings: SettingsDep
) -> Any:
    """go-metrics' in-memory sink shape, as the original served it."""
    views = await pool_views(client, settings.task_queue)
    recent = await events.recent()
    by_status: dict[str, int] = {}
    for doc in recent.values():
        by_status[doc.status] = by_status.get(doc.status, 0) + 1
    gauges = (
        [
            {"Name": "scaleflow.pool.nodes", "Value": len(v.nodes), "Labels": {"class": v.name}}
            for v in views
        ]
        + [
            {"Name": "scaleflow.pool.queued", "Value": len(v.queue), "Labels": {"class": v.name}}
            for v in views
        ]
        + [
            {"Name": "scaleflow.operations", "Value": n, "Labels": {"status": s}}
            for s, n in sorted(by_status.items())
        ]
    )
    counters = [
        {"Name": "scaleflow.http.requests", "Count": request.app.state.requests, "Labels": {}}
    ]
    stamp = time.strftime("%Y-%m-%d %H:%M:%S +0000 UTC", time.gmtime())
    return {"Timestamp": stamp, "Gauges": gauges, "Points": [], "Counters": counters, "Samples": []}
