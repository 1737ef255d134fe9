"""The JSON the dashboard needs and no public route gives: any pool's 30-minute
statistics, and the genisys services. Kept out of the OpenAPI schema: they serve the
page, not API clients, and may change with it.

Everything else the page reads through the public routes (``/v1/pools``,
``/v1/scale/status``, ``/v1/scale/progress/{id}``, ``/api/v2/metadata``).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from temporalio.client import Client, RPCTimeoutOrCancelledError, WorkflowQueryFailedError
from temporalio.service import RPCError

from scaleflow.api.deps import ClientDep, SettingsDep
from scaleflow.api.limits import UpdateBusyError, retried
from scaleflow.api.routes import memcache
from scaleflow.api.temporal import running_query
from scaleflow.core.genisys import ServiceView, service_workflow_id
from scaleflow.core.models import valid_name
from scaleflow.workflows.services import ServiceWorkflow

router = APIRouter(prefix="/dashboard/data", include_in_schema=False)

# A page lists at most this many services; more would not be read anyway.
MAX_SERVICES = 200
# One service whose worker is gone must not hold the whole list up.
VIEW_TIMEOUT = timedelta(seconds=5)


class ServiceRow(BaseModel):
    """A service's view, or why it could not be read (the row still shows its name)."""

    service: str
    view: ServiceView | None = None
    problem: str | None = None


@router.get("/pools/{name}/stats")
async def pool_stats(name: str, client: ClientDep, settings: SettingsDep) -> JSONResponse:
    """``/api/manager/aggregate_stats`` for any pool: that route serves the default
    pool only, and one code path keeps the figures the same for both."""
    return await memcache.aggregate_stats(
        client, settings.model_copy(update={"default_pool_name": name})
    )


async def service_row(client: Client, name: str) -> ServiceRow:
    handle = client.get_workflow_handle(service_workflow_id(name))
    try:
        view: ServiceView = await retried(
            handle.id, lambda: handle.query(ServiceWorkflow.view, rpc_timeout=VIEW_TIMEOUT)
        )
    except (RPCError, RPCTimeoutOrCancelledError, WorkflowQueryFailedError, UpdateBusyError) as exc:
        return ServiceRow(service=name, problem=f"could not read the service: {exc}")
    return ServiceRow(service=name, view=view)


@router.get("/services")
async def services(client: ClientDep, settings: SettingsDep) -> list[ServiceRow]:
    """Every running genisys service entity of this deployment, by name."""
    names: set[str] = set()
    query = running_query("ServiceWorkflow", settings.task_queue)
    async for wf in client.list_workflows(query, limit=MAX_SERVICES):
        name = wf.id.removeprefix("service/")
        if valid_name(name):
            names.add(name)
    return list(await asyncio.gather(*(service_row(client, n) for n in sorted(names))))
