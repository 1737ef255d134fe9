"""scaleflow's own view of pools: configuration, members and queue."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Header, Path, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from scaleflow.api.deps import ClientDep, RequestId, SettingsDep
from scaleflow.api.schemas.common import OPERATION_ID_EXAMPLE, OperationStarted
from scaleflow.api.schemas.errors import ChemtrailError, common_errors, error_docs
from scaleflow.api.temporal import call_pool, pool_view, pool_views, query_pool
from scaleflow.core.autoscaling.decision import DecisionRecord
from scaleflow.core.errors import ErrorKind, ScaleflowError
from scaleflow.core.models import (
    CacheSettings,
    Node,
    OperationAccepted,
    OperationKind,
    OperationRequest,
    PoolConfig,
    PoolView,
)
from scaleflow.core.slots import SlotMap
from scaleflow.workflows.pool import PoolWorkflow

# scaleflow's own routes answer errors as chemtrail does: {"Error", "Code"}.
router = APIRouter(tags=["pools"], responses=common_errors(ChemtrailError))
NO_POOL = error_docs(ChemtrailError, {404: "No pool of that name"})
PoolName = Annotated[str, Path(description="The pool (a chemtrail class)")]
# Built from the models (their defaults keep it current). FastAPI drops nulls from the
# document's examples, so "running" names an operation.
POOL_EXAMPLE = PoolView(
    name="web",
    config=PoolConfig(name="web"),
    has_policy=True,
    nodes=[
        Node(
            id="n-5f0c6c1e",
            address="127.0.0.1:11311",
            provider_ref="4242",
            created_at=datetime(2024, 6, 11, 10, 0, tzinfo=UTC),
        )
    ],
    queue=[OPERATION_ID_EXAMPLE],
    running=OPERATION_ID_EXAMPLE,
).model_dump(mode="json")
SLOTS_EXAMPLE = {
    "epoch": 3,
    "ranges": [{"start": 0, "end": 16383, "node": "n-5f0c6c1e"}],
    "moving": [],
    "addresses": {"n-5f0c6c1e": "127.0.0.1:11311"},
}


@router.get(
    "/v1/pools",
    responses={200: {"content": {"application/json": {"example": [POOL_EXAMPLE]}}}},
)
async def list_pools(client: ClientDep, settings: SettingsDep) -> list[PoolView]:
    """The pools of this deployment (its task queue), by name."""
    return await pool_views(client, settings.task_queue)


@router.get(
    "/v1/pools/{name}",
    responses={200: {"content": {"application/json": {"example": POOL_EXAMPLE}}}, **NO_POOL},
)
async def read_pool(name: PoolName, client: ClientDep) -> PoolView:
    view = await pool_view(client, name)
    if view is None:
        raise ScaleflowError(ErrorKind.NOT_FOUND, f"no pool named {name!r}")
    return view


@router.get(
    "/v1/pools/{name}/slots",
    response_model=SlotMap,
    responses={
        200: {
            "content": {"application/json": {"example": SLOTS_EXAMPLE}},
            "headers": {"ETag": {"description": "The epoch, quoted", "schema": {"type": "string"}}},
        },
        304: {"description": "Not Modified: If-None-Match names the current epoch"},
        **NO_POOL,
    },
)
async def read_slots(
    name: PoolName,
    client: ClientDep,
    response: Response,
    if_none_match: Annotated[str | None, Header(max_length=100)] = None,
) -> SlotMap | Response:
    """The pool's slot map. Its ETag is the epoch: a client polling with
    ``If-None-Match`` gets 304 until the map changes."""
    slot_map: SlotMap = await query_pool(client, name, PoolWorkflow.slots)
    etag = f'"{slot_map.epoch}"'
    if if_none_match == etag:
        return Response(status_code=304, headers={"ETag": etag})
    response.headers["ETag"] = etag
    return slot_map


DECISION_EXAMPLE = {
    "at": "2024-06-11T10:03:00Z",
    "rule": "threshold/checks",
    "reading": "cpu 83.0%, memory 41.2%",
    "source": "nomad",
    "result": "check cpu-high: cpu 83.0% > 80% -> scale-out by 1",
    "direction": "scale-out",
    "count": 2,
    "new_count": 3,
    "acted": True,
    "dry_run": False,
    "operation": OPERATION_ID_EXAMPLE,
}


@router.get(
    "/v1/pools/{name}/decisions",
    response_model=list[DecisionRecord],
    responses={200: {"content": {"application/json": {"example": [DECISION_EXAMPLE]}}}, **NO_POOL},
)
async def read_decisions(name: PoolName, client: ClientDep) -> list[DecisionRecord]:
    """The pool's autoscaler's last 100 decisions, oldest first: the reading, the rule,
    the result, and whether it was acted on (queued as ``operation``) or held, skipped
    or a dry run."""
    found: list[DecisionRecord] = await query_pool(client, name, PoolWorkflow.decisions)
    return found


EVICTION_HELP = (
    "memcached evicts only by (segmented) LRU, or not at all with -M: use 'lru' or 'none'"
)


class CacheConfigBody(BaseModel):
    """The cache settings rolled out to every node of the pool."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"capacity_mb": 128, "eviction": "lru"}]}
    )

    capacity_mb: int = Field(gt=0, le=1_048_576, description="memcached's -m, in MB")
    eviction: str = Field(
        default="lru",
        description="lru, or none (memcached's -M: writes fail when full); any case",
        json_schema_extra={"pattern": "^([Ll][Rr][Uu]|[Nn][Oo][Nn][Ee])$"},
    )

    @field_validator("eviction")
    @classmethod
    def _eviction(cls, v: str) -> str:
        v = v.lower()
        if v not in ("lru", "none"):
            raise ValueError(f"eviction {v!r} is not supported: {EVICTION_HELP}")
        return v


@router.put(
    "/v1/pools/{name}/cache-config",
    status_code=201,
    response_model=OperationStarted,
    responses={
        201: {"content": {"application/json": {"example": {"ID": OPERATION_ID_EXAMPLE}}}},
        **error_docs(
            ChemtrailError,
            {
                404: "No pool of that name",
                409: "The pool cannot roll these settings out now",
                412: "The pool's bounds refuse the operation",
                422: "The pool has no policy, or its policy is disabled",
            },
        ),
    },
)
async def roll_out_cache_config(
    name: PoolName,
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
