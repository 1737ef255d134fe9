"""The genisys surface: compute definitions, and scaling services through connectors.

Errors answer in the original's format, ``{"message": "..."}``, with its messages:
400 "No data received" (no body, not JSON, or empty JSON), 400 "Missing parameters.",
501 "Undefined compute: X." on the service routes.

Bodies are parsed by hand rather than by a Pydantic body model because the original's
error messages depend on *how* a body is wrong (absent vs. incomplete), and because any
content type is accepted, as ``curl -d`` sends form-encoded by default.

``upscale`` and ``downscale`` answer **201** with ``{"ID": "<uuid>"}``: they create an
operation, a resource that ``/v1/scale/status/{ID}`` then reads, as chemtrail's
``/v1/scale/out`` does; one client code path handles both surfaces. (The original
answered 200 after calling the connector synchronously; here the work is durable and
happens after the answer.)
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Request
from fastapi.responses import JSONResponse
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from scaleflow.api.deps import ClientDep, SettingsDep, update_with_start
from scaleflow.api.limits import retried
from scaleflow.api.schemas.common import (
    NAME_HELP,
    NAME_PATTERN,
    OperationStarted,
    body_doc,
    valid_name_whole,
)
from scaleflow.api.schemas.errors import GenisysError, common_errors, error_docs
from scaleflow.api.schemas.genisys import (
    COMPUTE_EXAMPLE,
    SERVICE_EXAMPLE,
    STARTED_EXAMPLE,
    ComputeBody,
    ComputeUpdateBody,
    ScaleBody,
    StepBody,
    connector_matches,
)
from scaleflow.core.genisys import (
    MAX_RESOURCES,
    REGISTRY_ID,
    Compute,
    DesiredRequest,
    Direction,
    RegistryInit,
    ServiceInit,
    ServiceView,
    StepRequest,
    connector_problem,
    name_problem,
    service_workflow_id,
)
from scaleflow.core.models import valid_name
from scaleflow.core.settings import Settings
from scaleflow.workflows.computes import ComputeRegistryWorkflow
from scaleflow.workflows.services import ServiceWorkflow

log = logging.getLogger(__name__)
router = APIRouter(tags=["genisys"], responses=common_errors(GenisysError))

NO_DATA = "No data received"
SEED_TIMEOUT = timedelta(seconds=10)
MISSING = "Missing parameters."


def genisys_error(status: int, message: str) -> dict[str, Any]:
    return {"message": message}


def _bad(message: str, status: int = 400) -> HTTPException:
    return HTTPException(status_code=status, detail=message)


def undefined_compute(name: object) -> HTTPException:
    return _bad(f"Undefined compute: {name}.", 501)


async def json_body(request: Request) -> dict[str, Any]:
    """The body as the original read it: absent, unparsable or empty is "no data"."""
    raw = await request.body()
    try:
        data = json.loads(raw) if raw.strip() else None
    except (ValueError, UnicodeDecodeError):
        data = None
    if not data:
        raise _bad(NO_DATA)
    if not isinstance(data, dict):
        raise _bad(MISSING)
    return data


def required(body: dict[str, Any], *fields: str) -> list[Any]:
    if any(body.get(f) is None for f in fields):
        raise _bad(MISSING)
    return [body[f] for f in fields]


# ---- the compute registry ------------------------------------------------------


def registry_handle(client: Client) -> WorkflowHandle[Any, Any]:
    return client.get_workflow_handle(REGISTRY_ID)


async def list_computes(client: Client) -> list[Compute]:
    try:
        return await registry_handle(client).query(ComputeRegistryWorkflow.definitions)
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return []  # nothing was ever defined
        raise


async def find_compute(client: Client, name: str) -> Compute | None:
    return next((c for c in await list_computes(client) if c.name == name), None)


async def _registry_seed(client: Client) -> RegistryInit:
    """What a new registry run starts with: the last run's definitions, if one ended
    (terminated by an operator, say), so that a write never silently drops them."""
    try:
        desc = await registry_handle(client).describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return RegistryInit()
        raise
    if desc.status == WorkflowExecutionStatus.RUNNING:
        return RegistryInit()  # not used: the running entity is updated
    try:
        # Answered by a worker replaying the ended run; bounded, as none may be polling.
        computes = await registry_handle(client).query(
            ComputeRegistryWorkflow.definitions, rpc_timeout=SEED_TIMEOUT
        )
    except RPCError as exc:
        log.warning("could not read the ended compute registry, starting an empty one: %s", exc)
        return RegistryInit()
    return RegistryInit(computes=computes)


async def registry_update(client: Client, settings: Settings, update: Any, arg: Any) -> Any:
    """Update-with-start of the registry entity (``genisys/computes``)."""
    return await update_with_start(
        client,
        settings,
        run=ComputeRegistryWorkflow.run,
        init=await _registry_seed(client),
        workflow_id=REGISTRY_ID,
        update=update,
        arg=arg,
    )


def _compute_from(name: Any, connector: Any) -> Compute:
    problem = name_problem("compute", name) or connector_problem(connector)
    if problem is None and not valid_name_whole(name):
        problem = f"Invalid compute name {name!r}: use {NAME_HELP}."
    if problem is None and not connector_matches(connector):
        problem = (
            f"Invalid connector {connector[:200]!r}: expected an http(s) URL such as "
            "http://localhost:7051 (a host, an optional port and path)."
        )
    if problem:
        raise _bad(problem)
    return Compute(name=name, connector=connector)


# Each route's own answers; every route may also answer common_errors.
BAD_BODY = (
    "No data received (no body, not JSON, or empty), Missing parameters., or a field "
    "that is not what the route takes"
)
ComputeName = Annotated[str, Path(description="The compute's name")]
ServiceName = Annotated[
    str,
    Path(
        description=f"The service's name: {NAME_HELP}", json_schema_extra={"pattern": NAME_PATTERN}
    ),
]
UNDEFINED = error_docs(GenisysError, {501: "Undefined compute: X. (no such compute)"})


@router.get(
    "/compute",
    responses={200: {"content": {"application/json": {"example": [COMPUTE_EXAMPLE]}}}},
)
async def read_computes(client: ClientDep) -> list[Compute]:
    return await list_computes(client)


@router.post(
    "/compute",
    status_code=201,
    responses={
        201: {"content": {"application/json": {"example": COMPUTE_EXAMPLE}}},
        **error_docs(GenisysError, {400: BAD_BODY, 409: "Compute X already exists."}),
    },
    openapi_extra=body_doc(ComputeBody),
)
async def create_compute(request: Request, client: ClientDep, settings: SettingsDep) -> Compute:
    """Define a compute; 409 if the name is taken (PUT changes an existing one)."""
    name, connector = required(await json_body(request), "name", "connector")
    compute = _compute_from(name, connector)
    return await registry_update(client, settings, ComputeRegistryWorkflow.create, compute)


@router.get(
    "/compute/{name}",
    responses={
        200: {"content": {"application/json": {"example": COMPUTE_EXAMPLE}}},
        **error_docs(GenisysError, {404: "Undefined compute: X."}),
    },
)
async def read_compute(name: ComputeName, client: ClientDep) -> Compute:
    found = await find_compute(client, name)
    if found is None:
        raise _bad(f"Undefined compute: {name}.", 404)
    return found


@router.put(
    "/compute/{name}",
    responses={
        200: {"content": {"application/json": {"example": COMPUTE_EXAMPLE}}},
        **error_docs(
            GenisysError,
            {
                400: BAD_BODY + ", or a body name other than the path's",
                404: "Undefined compute: X.",
            },
        ),
    },
    openapi_extra=body_doc(ComputeUpdateBody),
)
async def replace_compute(
    name: ComputeName, request: Request, client: ClientDep, settings: SettingsDep
) -> Compute:
    body = await json_body(request)
    (connector,) = required(body, "connector")
    if body.get("name") not in (None, name):
        raise _bad(f"Compute name {body['name']!r} in the body does not match {name!r}.")
    if not valid_name_whole(name):
        raise _bad(f"Undefined compute: {name}.", 404)
    compute = _compute_from(name, connector)
    saved = await registry_update(client, settings, ComputeRegistryWorkflow.replace, compute)
    await _tell_services(client, saved)
    return saved


async def _tell_services(client: Client, compute: Compute) -> None:
    """Services kept on this compute follow its new connector (best effort: logged)."""
    query = "WorkflowType = 'ServiceWorkflow' AND ExecutionStatus = 'Running'"
    try:
        async for wf in client.list_workflows(query):
            await client.get_workflow_handle(wf.id).signal(ServiceWorkflow.compute_changed, compute)
    except RPCError as exc:
        log.warning("could not tell services that compute %s moved: %s", compute.name, exc)


# ---- services ----------------------------------------------------------------------


def _service_name(name: str) -> str:
    problem = name_problem("service", name)
    if problem is None and not valid_name_whole(name):
        problem = f"Invalid service name {name!r}: use {NAME_HELP}."
    if problem:
        raise _bad(problem)
    return name


async def _named_compute(client: Client, name: Any) -> Compute:
    if not isinstance(name, str):
        raise _bad("Invalid parameter compute: expected the name of a compute.")
    found = await find_compute(client, name) if valid_name(name) else None
    if found is None:
        raise undefined_compute(name)
    return found


async def service_update(
    client: Client, settings: Settings, name: str, update: Any, arg: Any
) -> Any:
    """Update-with-start of the service's entity (``service/<name>``)."""
    return await update_with_start(
        client,
        settings,
        run=ServiceWorkflow.run,
        init=ServiceInit(name=name),
        workflow_id=service_workflow_id(name),
        update=update,
        arg=arg,
    )


async def service_view(client: Client, name: str) -> ServiceView | None:
    if not valid_name_whole(name):
        return None
    try:
        handle = client.get_workflow_handle(service_workflow_id(name))
        return await retried(handle.id, lambda: handle.query(ServiceWorkflow.view))
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return None
        raise


async def _step(
    name: str, direction: Direction, request: Request, client: Client, settings: Settings
) -> JSONResponse:
    (compute_name,) = required(await json_body(request), "compute")
    compute = await _named_compute(client, compute_name)
    _service_name(name)
    op_id = await service_update(
        client,
        settings,
        name,
        ServiceWorkflow.step,
        StepRequest(direction=direction, compute=compute),
    )
    return JSONResponse({"ID": op_id}, status_code=201)


STEP_RESPONSES: dict[int | str, dict[str, Any]] = {
    201: {"content": {"application/json": {"example": STARTED_EXAMPLE}}},
    **error_docs(
        GenisysError,
        {
            400: BAD_BODY + ", or an invalid service name",
            409: "The service's queue could not start the operation",
        },
    ),
    **UNDEFINED,
}


@router.post(
    "/service/{name}/upscale",
    status_code=201,
    response_model=OperationStarted,
    responses=STEP_RESPONSES,
    openapi_extra=body_doc(StepBody),
)
async def upscale(
    name: ServiceName, request: Request, client: ClientDep, settings: SettingsDep
) -> Any:
    """Add one resource of the service in the compute; 201 with the operation's ID."""
    return await _step(name, Direction.OUT, request, client, settings)


@router.post(
    "/service/{name}/downscale",
    status_code=201,
    response_model=OperationStarted,
    responses=STEP_RESPONSES,
    openapi_extra=body_doc(StepBody),
)
async def downscale(
    name: ServiceName, request: Request, client: ClientDep, settings: SettingsDep
) -> Any:
    """Remove one resource of the service from the compute; 201 with the operation's ID."""
    return await _step(name, Direction.IN, request, client, settings)


@router.post(
    "/service/{name}/scale",
    responses={
        200: {"content": {"application/json": {"example": SERVICE_EXAMPLE}}},
        **error_docs(
            GenisysError,
            {
                400: BAD_BODY + ", an invalid service name, or no compute given for a "
                "service that has used none"
            },
        ),
        **UNDEFINED,
    },
    openapi_extra=body_doc(ScaleBody),
)
async def scale(
    name: ServiceName, request: Request, client: ClientDep, settings: SettingsDep
) -> ServiceView:
    """Set the count the service's entity keeps (checked every 15 s); 200 with the service.

    ``compute`` defaults to the compute the service last used."""
    body = await json_body(request)
    (number,) = required(body, "number")
    if not isinstance(number, int) or isinstance(number, bool) or not 0 <= number <= MAX_RESOURCES:
        raise _bad(f"Invalid number {number!r}: expected an integer from 0 to {MAX_RESOURCES}.")
    compute = None
    if body.get("compute") is not None:
        compute = await _named_compute(client, body["compute"])
    _service_name(name)
    if compute is None:
        # Checked before update-with-start, which would create the entity even when its
        # validator then rejects the request.
        view = await service_view(client, name)
        if view is None or view.compute is None:
            raise _bad(f"No compute known for service {name}: give one with 'compute'.")
    return await service_update(
        client,
        settings,
        name,
        ServiceWorkflow.set_desired,
        DesiredRequest(number=number, compute=compute),
    )


@router.get(
    "/service/{name}",
    responses={
        200: {"content": {"application/json": {"example": SERVICE_EXAMPLE}}},
        **error_docs(GenisysError, {404: "Undefined service: X."}),
    },
)
async def read_service(name: Annotated[str, Path()], client: ClientDep) -> ServiceView:
    """The desired count, the compute and the count last observed at its connector."""
    view = await service_view(client, name)
    if view is None:
        raise _bad(f"Undefined service: {name}.", 404)
    return view
