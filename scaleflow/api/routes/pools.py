"""scaleflow's own view of pools: configuration, members and queue."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from temporalio.client import Client

from scaleflow.api.temporal import get_client, pool_view, pool_views
from scaleflow.core.errors import ErrorKind, ScaleflowError
from scaleflow.core.models import PoolView

router = APIRouter(tags=["pools"])
ClientDep = Annotated[Client, Depends(get_client)]


@router.get("/v1/pools")
async def list_pools(client: ClientDep) -> list[PoolView]:
    return await pool_views(client)


@router.get("/v1/pools/{name}")
async def read_pool(name: str, client: ClientDep) -> PoolView:
    view = await pool_view(client, name)
    if view is None:
        raise ScaleflowError(ErrorKind.NOT_FOUND, f"no pool named {name!r}")
    return view
