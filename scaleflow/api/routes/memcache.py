"""The memcache auto-scaler (seed 001) and manager app (seed 002) surfaces.

Every route works on the pool named by ``settings.default_pool_name``. Answers are the
originals' envelopes: ``{"success": "true", "content": ...}`` and, for every error
(validation included), ``{"success": "false", "error": {"code": n, "message": "..."}}``.
POST bodies may be JSON or forms (urlencoded or multipart): a JSON body is typed (a
number must be a JSON number), a form's values are read as JSON where the field is not
text (``0.5``, ``true``). Operations answer at once with their ``ID``; they are read at
``/v1/scale/status/{ID}``.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, TypeVar, get_args, get_origin

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from temporalio.client import Client, WorkflowQueryFailedError

from scaleflow.api.deps import ClientDep, RequestId, SettingsDep
from scaleflow.api.schemas.common import FORMS, JSON, body_doc, validate_json
from scaleflow.api.schemas.errors import MemcacheError, common_errors, error_docs
from scaleflow.api.schemas.memcache import (
    AggregateStats,
    CacheList,
    CacheListBody,
    CacheListChange,
    ConfigRollout,
    ManagerConfigBody,
    ManualResize,
    ManualResizeBody,
    NodeDeleteBody,
    NodeDeleted,
    NodeDoc,
    Ok,
    PoolNodeList,
    PoolSize,
    PoolSizeConfig,
    ScalerConfigBody,
    ScalerThresholds,
    Started,
    TerminateAll,
    TestMissRate,
    TestMissRateBody,
)
from scaleflow.api.temporal import call_pool, pool_view, query_pool
from scaleflow.core.autoscale import AutoscalerConfig, StatsSample
from scaleflow.core.errors import ErrorKind, ScaleflowError
from scaleflow.core.models import (
    CacheSettings,
    DataClearSpec,
    Node,
    NodeState,
    OperationAccepted,
    OperationKind,
    OperationRequest,
    PoolView,
)
from scaleflow.core.settings import Settings
from scaleflow.workflows.pool import PoolWorkflow

STATS_POINTS = 30
THRESHOLD_FIELDS = (
    "max_miss_rate_threshold",
    "min_miss_rate_threshold",
    "expand_ratio",
    "shrink_ratio",
)
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
MB = 1024 * 1024


def memcache_error(status: int, message: str) -> dict[str, Any]:
    return {"success": "false", "error": {"code": status, "message": message}}


router = APIRouter(tags=["memcache"], responses=common_errors(MemcacheError))
B = TypeVar("B", bound=BaseModel)
# Every route works on the default pool; it may not exist yet.
NO_POOL = error_docs(MemcacheError, {404: "The default pool does not exist"})
# Resizes: the seed's 400 at the pool's bounds; a refusal of the pool's queue.
RESIZE_ERRORS = error_docs(
    MemcacheError,
    {
        400: "A body that is not what the route takes, or the pool already reached its "
        "maximum or minimum",
        404: "The default pool does not exist",
        409: "The pool's queue refused the operation",
        422: "The pool has no policy, or its policy is disabled",
    },
)


def form_or_json(model: type[BaseModel], *, required: bool = True) -> dict[str, Any]:
    """``openapi_extra``: the body as JSON or as a form, both with ``model``'s fields."""
    return body_doc(model, media_types=(JSON, *FORMS), required=required)


def ok(content: Any) -> JSONResponse:
    return JSONResponse({"success": "true", "content": content})


# ---- bodies -----------------------------------------------------------------


async def read_fields(request: Request) -> tuple[dict[str, Any], bool]:
    """The body's fields, from JSON or a form, and whether they came as a form (strings
    to read as the fields' types); an empty body has none."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    raw = await request.body()
    if ctype in FORM_TYPES and not _looks_like_json(raw, ctype):
        form = await request.form()
        fields: dict[str, Any] = {}
        for key in form:
            # A file is not a value any field takes: it stays one, to be refused (400).
            values = [v if isinstance(v, str) else {"file": v.filename} for v in form.getlist(key)]
            fields[key] = values[0] if len(values) == 1 else values
        return fields, True
    if not raw.strip():
        return {}, False
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ScaleflowError(ErrorKind.INVALID, f"invalid JSON body: {exc}") from exc
    if not isinstance(data, dict):
        raise ScaleflowError(
            ErrorKind.INVALID,
            f"body: expected a JSON object or a form, got {type(data).__name__}",
        )
    return data, False


def _looks_like_json(raw: bytes, ctype: str) -> bool:
    # ``curl -d '{"change": "increase"}'`` sends JSON labelled as a urlencoded form.
    return ctype == FORM_TYPES[0] and raw.lstrip().startswith(b"{")


def parse(model: type[B], fields: dict[str, Any]) -> B:
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from exc


async def body(request: Request, model: type[B]) -> B:
    """The body as ``model``. JSON carries types, which must be the fields' (true is not
    a number, "0.5" is not one either); a form's values are read as JSON where the field
    is not text (0.5, true, null), as the document's schema reads them."""
    fields, is_form = await read_fields(request)
    if is_form:
        fields = {k: _form_value(model, k, v) for k, v in fields.items()}
    try:
        # 2.0 was always read as 2 here (pydantic's lax mode did).
        return validate_json(model, fields, integral_floats=True)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from exc


def _form_value(model: type[BaseModel], key: str, value: Any) -> Any:
    field = model.model_fields.get(key)
    if field is None or _is_text(field.annotation):
        return value
    if isinstance(value, list):
        return [_json_reading(v) for v in value]
    return _json_reading(value)


def _is_text(annotation: Any) -> bool:
    """str, list[str], Any, or one of them or None."""
    if annotation is str or annotation is Any:
        return True
    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) is list:
        return args == [str]
    return bool(args) and all(_is_text(a) for a in args)


def _json_reading(text: Any) -> Any:
    if not isinstance(text, str):
        return text  # a file: refused by the field's type
    try:
        return json.loads(text)
    except ValueError:
        return text


# ---- the pool ---------------------------------------------------------------


async def view_of(client: Client, settings: Settings) -> PoolView:
    view = await pool_view(client, settings.default_pool_name)
    if view is None:
        raise ScaleflowError(ErrorKind.NOT_FOUND, f"no pool named {settings.default_pool_name!r}")
    return view


def members(view: PoolView) -> list[Node]:
    return sorted(view.nodes, key=lambda n: (n.created_at, n.id))


def leaving(node: Node) -> bool:
    return node.state in (NodeState.DRAINING, NodeState.TERMINATED)


async def call_default(client: Client, settings: Settings, update: Any, arg: Any) -> Any:
    """An update of the default pool; a missing pool is the original's 404."""
    return await call_pool(
        client, settings.default_pool_name, update, arg, missing=ErrorKind.NOT_FOUND
    )


async def submit(client: Client, settings: Settings, req: OperationRequest) -> str:
    """Submit an operation; crossing MaxCount/MinCount is the original's 400."""
    try:
        accepted: OperationAccepted = await call_default(client, settings, PoolWorkflow.submit, req)
    except ScaleflowError as exc:
        out = req.kind == OperationKind.SCALE_OUT
        if exc.kind == ErrorKind.BOUNDS or (exc.kind == ErrorKind.NO_NODES and not out):
            bound = "maximum" if out else "minimum"
            raise ScaleflowError(
                ErrorKind.INVALID, f"Pool size already reached to {bound} ({exc.message})"
            ) from exc
        raise
    return accepted.id


def request_id(header: str | None) -> str:
    return header or str(uuid.uuid4())


async def set_autoscaler(client: Client, settings: Settings, cfg: AutoscalerConfig) -> PoolView:
    view: PoolView = await call_default(client, settings, PoolWorkflow.set_autoscaler, cfg)
    return view


def merged(current: AutoscalerConfig, given: dict[str, Any]) -> AutoscalerConfig:
    """The current configuration with the given fields; checked as a whole (min < max)."""
    return parse(AutoscalerConfig, {**current.model_dump(), **given})


def scaler_parameters(cfg: AutoscalerConfig) -> dict[str, Any]:
    return {f: getattr(cfg, f) for f in THRESHOLD_FIELDS}


def node_doc(node: Node) -> dict[str, Any]:
    return {
        "id": node.id,
        "address": node.address,
        "state": node.state.value,
        "created_at": node.created_at.isoformat(),
    }


# ---- the manager app (seed 002) ---------------------------------------------


@router.get("/api/manager/pool_node_list", response_model=Ok[PoolNodeList], responses=NO_POOL)
async def pool_node_list(client: ClientDep, settings: SettingsDep) -> JSONResponse:
    """The addresses (``host:port``) of the pool's nodes, oldest first."""
    view = await view_of(client, settings)
    return ok({"pool_node_list": [n.address for n in members(view) if n.address]})


@router.get("/api/manager/poolsize", response_model=Ok[PoolSize], responses=NO_POOL)
async def poolsize(client: ClientDep, settings: SettingsDep) -> JSONResponse:
    view = await view_of(client, settings)
    return ok({"size": len(view.nodes)})


@router.get("/api/manager/poolsize/config", response_model=Ok[PoolSizeConfig], responses=NO_POOL)
async def poolsize_config(client: ClientDep, settings: SettingsDep) -> JSONResponse:
    cfg = (await view_of(client, settings)).autoscaler
    if not cfg.auto_mode:
        return ok({"resize_pool_option": "manual", "resize_pool_parameters": {}})
    return ok({"resize_pool_option": "automatic", "resize_pool_parameters": scaler_parameters(cfg)})


@router.get("/api/manager/aggregate_stats", response_model=Ok[AggregateStats], responses=NO_POOL)
async def aggregate_stats(client: ClientDep, settings: SettingsDep) -> JSONResponse:
    """The last 30 samples (one a minute by default), oldest first; the front is padded
    with 0 while the pool has fewer than 30."""
    samples = (await stats_of(client, settings))[-STATS_POINTS:]
    pad = [0] * (STATS_POINTS - len(samples))
    return ok(
        {
            "miss_rate": pad + [round(s.miss_rate, 4) for s in samples],
            "hit_rate": pad + [round(s.hit_rate, 4) for s in samples],
            "number_of_items_in_cache": pad + [s.items for s in samples],
            "total_size_of_items_in_cache": pad + [round(s.bytes / MB, 3) for s in samples],
            "number_of_requests_served_per_minute": pad
            + [round(s.requests_per_minute, 2) for s in samples],
        }
    )


async def stats_of(client: Client, settings: Settings) -> list[StatsSample]:
    name = settings.default_pool_name
    try:
        samples: list[StatsSample] = await query_pool(client, name, PoolWorkflow.stats)
    except WorkflowQueryFailedError as exc:
        raise StarletteHTTPException(503, f"pool {name} could not answer: {exc}") from exc
    return samples


@router.post(
    "/api/manager/poolsize/manual",
    response_model=Ok[ManualResize],
    responses=RESIZE_ERRORS,
    openapi_extra=form_or_json(ManualResizeBody),
)
async def poolsize_manual(
    request: Request, client: ClientDep, settings: SettingsDep, rid: RequestId = None
) -> JSONResponse:
    """``change``: ``increase`` (a node is created, then takes its share of the slots) or
    ``decrease`` (a node's slots move away first, then it is drained and deleted). The
    pool runs resizes one at a time, in order. A manual resize turns ``auto_mode`` off,
    as the original's manual option did; ``resize_pool_option`` then reads ``manual``."""
    change = (await body(request, ManualResizeBody)).change
    if change not in ("increase", "decrease"):
        raise ScaleflowError(
            ErrorKind.INVALID, f"Parameter change can only be increase or decrease (got {change!r})"
        )
    view = await view_of(client, settings)
    kind = OperationKind.SCALE_OUT if change == "increase" else OperationKind.SCALE_IN
    req = OperationRequest(kind=kind, request_id=request_id(rid), count=1, reason="manual")
    op_id = await submit(client, settings, req)
    if view.autoscaler.auto_mode:
        await set_autoscaler(
            client, settings, view.autoscaler.model_copy(update={"auto_mode": False})
        )
    return ok({"ID": op_id, "change": change})


@router.post(
    "/api/manager/poolsize/automatic",
    response_model=Ok[PoolSizeConfig],
    responses={
        **NO_POOL,
        **error_docs(
            MemcacheError,
            {
                400: "A field out of its range, or min_miss_rate_threshold not below "
                "max_miss_rate_threshold (after merging with the current rule)",
                409: "The pool cannot take an auto-scaler now",
            },
        ),
    },
    openapi_extra=form_or_json(ScalerThresholds, required=False),
)
async def poolsize_automatic(
    request: Request, client: ClientDep, settings: SettingsDep
) -> JSONResponse:
    """The auto-scaler's four parameters (a field left out keeps its value); turns
    ``auto_mode`` on, which evaluates the rule at once."""
    given = (await body(request, ScalerThresholds)).model_dump(exclude_none=True)
    view = await view_of(client, settings)
    cfg = merged(view.autoscaler, {**given, "auto_mode": True})
    new = await set_autoscaler(client, settings, cfg)
    return ok(
        {
            "resize_pool_option": "automatic",
            "resize_pool_parameters": scaler_parameters(new.autoscaler),
        }
    )


@router.post(
    "/api/manager/config",
    response_model=Ok[ConfigRollout],
    responses=RESIZE_ERRORS,
    openapi_extra=form_or_json(ManagerConfigBody),
)
async def manager_config(
    request: Request, client: ClientDep, settings: SettingsDep, rid: RequestId = None
) -> JSONResponse:
    """Roll ``capacity`` (MB) and ``replacement_policy`` (``lru`` | ``none``) out to every
    node, one node at a time, no key lost."""
    cfg = await body(request, ManagerConfigBody)
    req = OperationRequest(
        kind=OperationKind.ROLLOUT,
        request_id=request_id(rid),
        cache=CacheSettings(capacity_mb=cfg.capacity, eviction=cfg.replacement_policy),  # type: ignore[arg-type]
        reason="manager config",
    )
    op_id = await submit(client, settings, req)
    return ok({"ID": op_id, "capacity": cfg.capacity, "replacement_policy": cfg.replacement_policy})


async def _clear(client: Client, settings: Settings, rid: str | None, full: bool) -> JSONResponse:
    req = OperationRequest(
        kind=OperationKind.DATA_CLEAR,
        request_id=request_id(rid),
        clear=DataClearSpec(s3=full, rds=full),
        reason="data clear" if full else "cache clear",
    )
    return ok({"ID": await submit(client, settings, req)})


@router.delete("/api/manager/cache/clear", response_model=Ok[Started], responses=RESIZE_ERRORS)
async def cache_clear(client: ClientDep, settings: SettingsDep, rid: RequestId = None) -> Any:
    """Empty every cache node (``flush_all``)."""
    return await _clear(client, settings, rid, full=False)


@router.delete("/api/manager/data/clear", response_model=Ok[Started], responses=RESIZE_ERRORS)
async def data_clear(client: ClientDep, settings: SettingsDep, rid: RequestId = None) -> Any:
    """Empty every cache node, the S3 bucket and the RDS tables."""
    return await _clear(client, settings, rid, full=True)


# ---- the auto-scaler (seed 001) ---------------------------------------------

HOME = """<!doctype html>
<html><head><meta charset="utf-8"><title>scaleflow auto-scaler</title></head>
<body><h1>scaleflow auto-scaler</h1>
<p>Pool <code>{pool}</code>. <a href="/dashboard">Dashboard</a> &middot;
<a href="/api/scaler/list">nodes</a> &middot;
<a href="/api/manager/aggregate_stats">statistics</a></p></body></html>
"""


@router.get("/api/scaler/", response_class=HTMLResponse, include_in_schema=False)
async def scaler_home(settings: SettingsDep) -> HTMLResponse:
    return HTMLResponse(HOME.format(pool=settings.default_pool_name))


@router.post(
    "/api/scaler/config",
    response_model=Ok[AutoscalerConfig],
    responses={
        **NO_POOL,
        **error_docs(
            MemcacheError,
            {
                400: "A field out of its range, or min_miss_rate_threshold not below "
                "max_miss_rate_threshold (after merging with the current configuration)",
                409: "The pool cannot take an auto-scaler now",
            },
        ),
    },
    openapi_extra=form_or_json(ScalerConfigBody, required=False),
)
async def scaler_config(request: Request, client: ClientDep, settings: SettingsDep) -> JSONResponse:
    """The auto-scaler's configuration; a field left out keeps its value. Switching
    ``auto_mode`` on evaluates the rule at once."""
    given = (await body(request, ScalerConfigBody)).model_dump(exclude_none=True)
    view = await view_of(client, settings)
    new = await set_autoscaler(client, settings, merged(view.autoscaler, given))
    return ok(new.autoscaler.model_dump())


@router.post(
    "/api/scaler/terminate_all",
    response_model=Ok[TerminateAll],
    responses={
        **RESIZE_ERRORS,
        **error_docs(MemcacheError, {400: "The pool has no nodes to terminate"}),
    },
)
async def terminate_all(client: ClientDep, settings: SettingsDep, rid: RequestId = None) -> Any:
    """Scale in every node, MinCount notwithstanding; the pool then tops itself up to
    MinCount with new nodes."""
    view = await view_of(client, settings)
    ids = [n.id for n in members(view) if not leaving(n)]
    if not ids:
        raise ScaleflowError(ErrorKind.INVALID, f"pool {view.name} has no nodes to terminate")
    req = OperationRequest(
        kind=OperationKind.SCALE_IN,
        request_id=request_id(rid),
        nodes=ids,
        ignore_min=True,
        reason="terminate_all",
    )
    return ok({"ID": await submit(client, settings, req), "nodes": ids})


@router.get(
    "/api/scaler/list",
    response_model=Ok[list[NodeDoc]],
    responses=NO_POOL,
    operation_id="scaler_list_get",
)
@router.post(
    "/api/scaler/list",
    response_model=Ok[list[NodeDoc]],
    responses=NO_POOL,
    operation_id="scaler_list_post",
)
async def scaler_list(client: ClientDep, settings: SettingsDep) -> JSONResponse:
    """The pool's nodes, oldest first (the original's page of EC2 instances, as JSON)."""
    view = await view_of(client, settings)
    return ok([node_doc(n) for n in members(view)])


@router.post(
    "/api/scaler/set_test_miss_rate",
    response_model=Ok[TestMissRate],
    responses={
        **NO_POOL,
        **error_docs(MemcacheError, {409: "The pool cannot evaluate the rule now"}),
    },
    openapi_extra=form_or_json(TestMissRateBody),
)
async def set_test_miss_rate(
    request: Request, client: ClientDep, settings: SettingsDep
) -> JSONResponse:
    """Apply the rule to this miss rate at once (resizing if it says so)."""
    rate = (await body(request, TestMissRateBody)).test_miss_rate
    reason: str = await call_default(client, settings, PoolWorkflow.evaluate, rate)
    return ok({"test_miss_rate": rate, "result": reason})


@router.get("/api/scaler/cache_list", response_model=Ok[CacheList], responses=NO_POOL)
async def read_cache_list(client: ClientDep, settings: SettingsDep) -> JSONResponse:
    view = await view_of(client, settings)
    return ok({"cache_pool_ids": [n.id for n in members(view)]})


@router.post(
    "/api/scaler/cache_list",
    response_model=Ok[CacheListChange],
    responses={
        **RESIZE_ERRORS,
        **error_docs(
            MemcacheError,
            {400: "A body that is not what the route takes, or an id of no node of the pool"},
        ),
    },
    openapi_extra=form_or_json(CacheListBody),
)
async def write_cache_list(
    request: Request, client: ClientDep, settings: SettingsDep, rid: RequestId = None
) -> JSONResponse:
    """``cache_pool_ids``: the nodes to keep (ids, or addresses); the others are
    scaled in, their slots moved away first."""
    keep_refs = (await body(request, CacheListBody)).cache_pool_ids
    view = await view_of(client, settings)
    nodes = members(view)
    by_ref = {n.id: n.id for n in nodes} | {n.address: n.id for n in nodes if n.address}
    unknown = [r for r in keep_refs if r not in by_ref]
    if unknown:
        raise ScaleflowError(
            ErrorKind.INVALID,
            f"cache_pool_ids: pool {view.name} has no node {', '.join(map(repr, unknown))} "
            f"(its nodes: {', '.join(n.id for n in nodes) or 'none'})",
        )
    keep = {by_ref[r] for r in keep_refs}
    remove = [n.id for n in nodes if n.id not in keep and not leaving(n)]
    if not remove:
        return ok({"ID": None, "removed": []})
    req = OperationRequest(
        kind=OperationKind.SCALE_IN, request_id=request_id(rid), nodes=remove, reason="cache_list"
    )
    return ok({"ID": await submit(client, settings, req), "removed": remove})


@router.post(
    "/api/poolsize/change",
    response_model=Ok[NodeDeleted],
    responses={
        **RESIZE_ERRORS,
        **error_docs(
            MemcacheError,
            {
                400: "A body that is not what the route takes, no node at cache_ip, a "
                "host several nodes share, or the pool already at its minimum"
            },
        ),
    },
    openapi_extra=form_or_json(NodeDeleteBody),
)
async def delete_node(
    request: Request, client: ClientDep, settings: SettingsDep, rid: RequestId = None
) -> JSONResponse:
    """``cache_ip``: the node to delete (``host:port``, a host only one node has, or an
    id); its slots move away, then it is drained and terminated."""
    ref = (await body(request, NodeDeleteBody)).cache_ip.strip()
    view = await view_of(client, settings)
    nodes = [n for n in members(view) if not leaving(n)]
    found = [n for n in nodes if ref in (n.id, n.address)]
    if not found:
        found = [n for n in nodes if n.address and n.address.rsplit(":", 1)[0] == ref]
    if not found:
        known = ", ".join(n.address or n.id for n in nodes) or "none"
        raise ScaleflowError(
            ErrorKind.INVALID,
            f"cache_ip: pool {view.name} has no node at {ref!r} (its nodes: {known})",
        )
    if len(found) > 1:
        raise ScaleflowError(
            ErrorKind.INVALID,
            f"cache_ip: {ref!r} matches {len(found)} nodes "
            f"({', '.join(str(n.address) for n in found)}): give host:port",
        )
    node = found[0]
    req = OperationRequest(
        kind=OperationKind.SCALE_IN,
        request_id=request_id(rid),
        nodes=[node.id],
        reason="poolsize change",
    )
    return ok({"ID": await submit(client, settings, req), "node": node_doc(node)})
