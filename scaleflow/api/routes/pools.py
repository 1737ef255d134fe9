"""scaleflow's own view of pools: configuration, members and queue."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Header, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, field_validator
from temporalio.service import RPCError, RPCStatusCode

from scaleflow.api.deps import ClientDep, RequestId
from scaleflow.api.limits import retried
from scaleflow.api.temporal import call_pool, pool_handle, pool_view, pool_views
from scaleflow.core.errors import ErrorKind, ScaleflowError
from scaleflow.core.models import (
    CacheSettings,
    OperationAccepted,
    OperationKind,
    OperationRequest,
    PoolView,
)
from scaleflow.core.slots import SlotMap
from scaleflow.workflows.pool import PoolWorkflow

router = APIRouter(tags=["pools"])


@router.get("/v1/pools")
async def list_pools(client: ClientDep) -> list[PoolView]:
    return await pool_views(client)


@router.get("/v1/pools/{name}")
async def read_pool(name: str, client: ClientDep) -> PoolView:
    view = await pool_view(client, name)
    if view is None:
        raise ScaleflowError(ErrorKind.NOT_FOUND, f"no pool named {name!r}")
    return view


@router.get("/v1/pools/{name}/slots", response_model=SlotMap)
async def read_slots(
    name: str,
    client: ClientDep,
    response: Response,
    if_none_match: Annotated[str | None, Header(max_length=100)] = None,
) -> SlotMap | Response:
    """The pool's slot map. Its ETag is the epoch: a client polling with
    ``If-None-Match`` gets 304 until the map changes."""
    try:
        handle = pool_handle(client, name)
        slot_map: SlotMap = await retried(handle.id, lambda: handle.query(PoolWorkflow.slots))
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise ScaleflowError(ErrorKind.NOT_FOUND, f"no pool named {name!r}") from exc
        raise
    etag = f'"{slot_map.epoch}"'
    if if_none_match == etag:
        return Response(status_code=304, headers={"ETag": etag})
    response.headers["ETag"] = etag
    return slot_map


EVICTION_HELP = (
    "memcached evicts only by (segmented) LRU, or not at all with -M: use 'lru' or 'none'"
)


class CacheConfigBody(BaseModel):
    capacity_mb: int = Field(gt=0, le=1_048_576)
    eviction: str = "lru"

    @field_validator("eviction")
    @classmethod
    def _eviction(cls, v: str) -> str:
        v = v.lower()
        if v not in ("lru", "none"):
            raise ValueError(f"eviction {v!r} is not supported: {EVICTION_HELP}")
        return v


@router.put("/v1/pools/{name}/cache-config", status_code=201)
async def roll_out_cache_config(
    name: str,
    body: CacheConfigBody,
    client: ClientDep,
    request_id: RequestId = None,
) -> JSONResponse:
    """Roll new cache settings out to every node, one node at a time, no key lost."""
    req = OperationRequest(
        kind=OperationKind.ROLLOUT,
        request_id=request_id or str(uuid.uuid4()),
        cache=CacheSettings(capacity_mb=body.capacity_mb, eviction=body.eviction),  # type: ignore[arg-type]
    )
    accepted: OperationAccepted = await call_pool(
        client, name, PoolWorkflow.submit, req, missing=ErrorKind.NOT_FOUND
    )
    return JSONResponse({"ID": accepted.id}, status_code=201)
