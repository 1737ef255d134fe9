"""The undermoon memory broker surface (seed 004) under ``/api/v2``: the seed's Memory
Broker API and the base Broker HTTP API it extends.

Every change is an update of the broker entity ``broker/<name>`` (``BrokerWorkflow``);
reads are its queries. The broker is ``DEFAULT_BROKER`` unless the app names another in
``app.state.broker_name`` (a second API instance on the same Temporal, as a replica).

Errors answer ``{"error": "CODE"}`` with the seed's status for each code
(``core.broker.errors.HTTP_STATUS``); ``INVALID_CONFIG`` adds ``key``, ``value`` and
``message``. The entity refuses a request with an ``ApplicationError`` whose ``type`` is
the code. What no seed code describes (a bad pagination query, a broker config that is
not one) is 400 ``INVALID_REQUEST`` with a ``message``. Bodies are read here, whatever
their content type, so that a body that is not what a route takes gets that route's code:
``INVALID_NODE_NUMBER`` for the node routes, ``INVALID_PROXY_ADDRESS`` for a proxy,
``INVALID_CONFIG`` for a cluster config, ``INVALID_META_VERSION`` for metadata that is not
ours, ``INVALID_MIGRATION_TASK`` for a migration commit. A name is checked before a body.

Changes answer 200 with the JSON ``""`` undermoon sends; the ``X-Broker-Epoch`` header
carries the global epoch after the change and ``X-Operation-ID`` the operation that
brings Redis there (``/v1/scale/status/<id>``), when one was started. An entity too busy
to take another change answers 409 ``RETRY``, as the seed does for a change that raced
another.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any, TypeVar, Union

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.convertors import PathConvertor, register_url_convertor
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from scaleflow.api.deps import (
    ClientDep,
    RequestId,
    SettingsDep,
    execute_update,
    update_with_start,
)
from scaleflow.api.errors import STATUS_BY_KIND
from scaleflow.api.limits import (
    DEFAULT_RETRY_AFTER_S,
    UpdateBusyError,
    is_transient_refusal,
    retried,
)
from scaleflow.api.schemas.broker import (
    ADDRESS_PATTERN,
    BROKER_CONFIG_EXAMPLE,
    CLUSTER_CONFIG_SCHEMA,
    CLUSTER_INFO_EXAMPLE,
    CLUSTER_NAME_PATTERN,
    CODE_BY_STATUS,
    INVALID_REQUEST,
    MAX_ADDRESS_LEN,
    META_EXAMPLE,
    U64_MAX,
    UNAVAILABLE,
    AddNodesBody,
    AddProxyBody,
    AddressesPayload,
    BrokerConfigBody,
    ClusterNamesPayload,
    ClusterPayload,
    CreateClusterBody,
    DetailedErrorBody,
    ErrorBody,
    FailureCheckPayload,
    InvalidConfigBody,
    MigrationTaskBody,
    PeerProxy,
    ProxyPayload,
    ProxyView,
    ScaleUpNodesBody,
)
from scaleflow.api.schemas.common import body_doc, validate_json
from scaleflow.core.broker import chunks, failures
from scaleflow.core.broker.errors import HTTP_STATUS, BrokerError, BrokerErrorCode
from scaleflow.core.broker.models import (
    CHUNK_NODES,
    META_VERSION,
    UNDERMOON_VERSION,
    BrokerConfig,
    BrokerMeta,
    ClusterInfo,
    MigrationTask,
    Role,
)
from scaleflow.core.broker.validation import (
    MAX_NODE_NUMBER,
    valid_address,
    validate_cluster_name,
    validate_node_number,
    validate_proxy,
)
from scaleflow.core.errors import ScaleflowError
from scaleflow.core.settings import Settings
from scaleflow.workflows.broker import BrokerWorkflow
from scaleflow.workflows.broker.models import (
    AddProxyRequest,
    BrokerConfigRequest,
    BrokerInit,
    BrokerReply,
    ClusterConfigRequest,
    ClusterRequest,
    CommitRequest,
    CreateClusterRequest,
    EpochRequest,
    FailureReportRequest,
    MigrateMode,
    MigrateRequest,
    NodesRequest,
    ProxyRequest,
    RestoreRequest,
    broker_workflow_id,
)
from scaleflow.workflows.broker.models import Request as BrokerRequest

log = logging.getLogger(__name__)

PREFIX = "/api/v2"
DEFAULT_BROKER = "default"
# Reading the last run of an ended entity, to start the next one with its metadata.
SEED_TIMEOUT = timedelta(seconds=10)
MAX_REPORTER_LEN = 200
CODE_RE = re.compile(r"[A-Z][A-Z0-9_]*")
EPOCH_RE = re.compile(r"[+-]?[0-9]{1,20}")
B = TypeVar("B", bound=BaseModel)
C = BrokerErrorCode


def broker_error(status: int, message: str) -> dict[str, Any]:
    """The surface's error body for errors raised outside its routes' own handling
    (unknown paths, Temporal unavailable): ``{"error": CODE}``, and the message when it
    is not a code itself."""
    if CODE_RE.fullmatch(message):
        return {"error": message}
    code = CODE_BY_STATUS.get(status) or (UNAVAILABLE if status >= 500 else INVALID_REQUEST)
    return {"error": code, "message": message}


class WholeConvertor(PathConvertor):
    """``path``, newlines included. Starlette's ``.*`` stops at a newline and its ``$``
    matches before a trailing one, so ``/clusters/meta/c1%0A`` was cluster ``c1``: a name
    must reach its check whole."""

    regex = "(?s:.*)"


register_url_convertor("whole", WholeConvertor())


class ApiError(Exception):
    """An error with a code of this API's own (not the seed's): code, message, status."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        code: str = INVALID_REQUEST,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.headers = headers

    def response(self) -> JSONResponse:
        body = {"error": self.code, "message": self.message}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def broker_response(err: BrokerError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status)


def entity_error(exc: ScaleflowError) -> BrokerError | ApiError:
    """An update the entity refused: its ``ApplicationError`` type (``exc.code``) is the
    seed's code."""
    try:
        code = BrokerErrorCode(exc.code or "")
    except ValueError:
        return ApiError(exc.message, status=STATUS_BY_KIND.get(exc.kind, 400))
    key = value = None
    detail = exc.details[0] if exc.details else None
    if code is C.INVALID_CONFIG and isinstance(detail, dict):
        key, value = str(detail.get("key", "")), str(detail.get("value", ""))
    return BrokerError(code, exc.message, key=key, value=value)


class BrokerRoute(APIRoute):
    """Answers the broker's refusals in the seed's format, whoever raised them."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except BrokerError as err:
                return broker_response(err)
            except ApiError as err:
                return err.response()
            except ScaleflowError as err:
                refused = entity_error(err)
                if isinstance(refused, BrokerError):
                    return broker_response(refused)
                return refused.response()
            except UpdateBusyError as err:
                # The seed's answer to a change that has to be sent again.
                log.warning("broker change turned away: %s", err.message)
                return retry_response(err.retry_after_s)
            except RPCError as err:
                if not is_transient_refusal(err):
                    raise
                # Temporal turned it away for load: the app would answer 429, and the
                # seed's RETRY is 409.
                log.warning("broker request turned away by Temporal: %s", err.message)
                return retry_response(DEFAULT_RETRY_AFTER_S)

        return route


def retry_response(retry_after_s: int) -> JSONResponse:
    headers = {"Retry-After": str(retry_after_s)}
    return JSONResponse({"error": C.RETRY.value}, status_code=409, headers=headers)


OTHER_ERRORS: dict[int | str, dict[str, Any]] = {
    "default": {
        "model": DetailedErrorBody,
        "description": "INVALID_REQUEST (400: a header or query that is not what the route "
        "takes), NOT_FOUND, METHOD_NOT_ALLOWED, UNAVAILABLE (503: Temporal did not answer)",
    }
}
router = APIRouter(prefix=PREFIX, tags=["broker"], route_class=BrokerRoute, responses=OTHER_ERRORS)


# ---- OpenAPI: what each route answers ------------------------------------------------

CHANGED: dict[int | str, dict[str, Any]] = {
    200: {
        "description": 'Done: the JSON string `""`, as undermoon answers.',
        "content": {
            "application/json": {"schema": {"type": "string", "enum": [""]}, "example": ""}
        },
        "headers": {
            "X-Broker-Epoch": {
                "description": "The global epoch after the change",
                "schema": {"type": "integer"},
            },
            "X-Operation-ID": {
                "description": "The operation that makes Redis follow, if one was started "
                "(read it at /v1/scale/status/<id>)",
                "schema": {"type": "string"},
            },
        },
    }
}


def refusals(*codes: BrokerErrorCode | str) -> dict[int | str, dict[str, Any]]:
    """The error answers of a route, grouped by status, for its OpenAPI document."""
    by_status: dict[int, list[str]] = {}
    for code in codes:
        status = HTTP_STATUS[code] if isinstance(code, BrokerErrorCode) else 400
        by_status.setdefault(status, []).append(str(code))
    out: dict[int | str, dict[str, Any]] = {}
    for status, names in sorted(by_status.items()):
        # Each code's body: INVALID_CONFIG's carries key, value and message, this API's own
        # codes a message, the seed's others the code alone.
        models: list[Any] = []
        if C.INVALID_CONFIG.value in names:
            models.append(InvalidConfigBody)
        if INVALID_REQUEST in names:
            models.append(DetailedErrorBody)
        if set(names) - {C.INVALID_CONFIG.value, INVALID_REQUEST}:
            models.append(ErrorBody)
        model = models[0] if len(models) == 1 else Union[tuple(models)]  # noqa: UP007
        out[status] = {"model": model, "description": " | ".join(names)}
    return out


# ---- the entity ------------------------------------------------------------------------


@dataclass
class Broker:
    """The broker entity, as the API reads and changes it."""

    client: Client
    settings: Settings
    name: str
    request_id: str | None = None

    @property
    def workflow_id(self) -> str:
        return broker_workflow_id(self.name)

    async def update(self, update: Any, req: BrokerRequest) -> BrokerReply:
        """The update on the running entity, or on a new one if none runs."""
        if self.request_id is not None:
            # The entity answers a known request id with its first answer, whatever the
            # update: one X-Request-ID sent to two routes must stay two requests.
            name = getattr(update, "__name__", "update")
            req = req.model_copy(update={"request_id": f"{name}:{self.request_id}"})
        try:
            reply: BrokerReply = await execute_update(self.client, self.workflow_id, update, req)
            return reply
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise
        reply = await update_with_start(
            self.client,
            self.settings,
            run=BrokerWorkflow.run,
            init=await self._seed(),
            workflow_id=self.workflow_id,
            update=update,
            arg=req,
        )
        return reply

    async def _seed(self) -> BrokerInit:
        """What a new run starts with: the metadata and config of the last run, if one
        ended (terminated by an operator, say), so that a change never drops them."""
        handle = self.client.get_workflow_handle(self.workflow_id)
        try:
            meta = await handle.query(BrokerWorkflow.meta, rpc_timeout=SEED_TIMEOUT)
            config = await handle.query(BrokerWorkflow.broker_config, rpc_timeout=SEED_TIMEOUT)
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                return BrokerInit(name=self.name)
            raise ApiError(
                f"could not read the metadata of the ended broker {self.name}: {exc.message}",
                status=503,
                code=UNAVAILABLE,
            ) from exc
        return BrokerInit(name=self.name, meta=meta, config=config)

    async def _query(self, query: Any, default: B) -> B:
        handle = self.client.get_workflow_handle(self.workflow_id)
        try:
            result: B = await retried(handle.id, lambda: handle.query(query))
            return result
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                return default  # nothing was ever changed
            raise

    async def meta(self) -> BrokerMeta:
        return await self._query(BrokerWorkflow.meta, BrokerMeta())

    async def config(self) -> BrokerConfig:
        return await self._query(BrokerWorkflow.broker_config, BrokerConfig())


def get_broker(
    request: Request, client: ClientDep, settings: SettingsDep, request_id: RequestId = None
) -> Broker:
    name = getattr(request.app.state, "broker_name", None) or DEFAULT_BROKER
    return Broker(client=client, settings=settings, name=name, request_id=request_id)


BrokerDep = Annotated[Broker, Depends(get_broker)]
# Names and numbers in paths are read by the routes (for the seed's codes); the schemas
# say what they accept.
ClusterName = Annotated[
    str,
    Path(
        description="1-30 of [A-Za-z0-9@_-] (else INVALID_CLUSTER_NAME)",
        examples=["mycluster"],
        json_schema_extra={"pattern": CLUSTER_NAME_PATTERN},
    ),
]
ProxyAddress = Annotated[str, Path(description="host:port", examples=["127.0.0.2:7000"])]
PathNodeNumber = Path(
    description="A positive multiple of 4, in decimal digits (else INVALID_NODE_NUMBER)",
    json_schema_extra={
        "type": "integer",
        "minimum": 4,
        "maximum": MAX_NODE_NUMBER,
        "multipleOf": 4,
    },
)
Offset = Annotated[int, Query(ge=0, description="Names to skip")]
Limit = Annotated[int | None, Query(ge=0, description="At most this many")]


def changed(reply: BrokerReply) -> JSONResponse:
    headers = {"X-Broker-Epoch": str(reply.epoch)}
    if reply.operation is not None:
        headers["X-Operation-ID"] = reply.operation
    return JSONResponse("", headers=headers)


# ---- bodies ----------------------------------------------------------------------------


async def read_json(request: Request) -> Any:
    """The body as JSON, whatever its content type (``curl -d`` labels it a form).

    Raises ``ValueError`` for no body, text that is not JSON, and NaN or infinities."""
    raw = await request.body()
    if not raw.strip():
        raise ValueError("no body: expected JSON")
    try:
        data = json.loads(raw)
        json.dumps(data, allow_nan=False)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"the body is not JSON: {exc}") from None
    return data


def problems(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err.get("loc", ())) or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid value')}")
    return "; ".join(parts)


async def body_of(request: Request, model: type[B], code: BrokerErrorCode) -> B:
    """The body as ``model``, JSON types as they are (no "8" or true for a number);
    anything else is the route's ``code``."""
    try:
        return validate_json(model, await read_json(request))
    except ValueError as exc:  # ValidationError is one
        detail = problems(exc) if isinstance(exc, ValidationError) else str(exc)
        raise BrokerError(code, detail) from None


def node_number_in_path(text: str) -> int:
    """``<node_number>`` of a path: decimal digits, then the seed's check."""
    if not (text.isascii() and text.isdigit() and len(text) <= 20):
        raise BrokerError(C.INVALID_NODE_NUMBER, f"invalid node number {text[:40]!r}")
    return validate_node_number(int(text))


# ---- views -----------------------------------------------------------------------------


def page(items: list[str], offset: int, limit: int | None) -> list[str]:
    end = None if limit is None else offset + limit
    return items[offset:end]


def proxy_view(meta: BrokerMeta, address: str) -> ProxyView | None:
    """A proxy as undermoon's ``GET /proxies/meta/<address>`` shows it: in a cluster, its
    nodes and the slots of the other proxies' masters; free, its node addresses."""
    proxy = meta.all_proxies.get(address)
    if proxy is None:
        return None
    cluster = meta.clusters.get(proxy.cluster) if proxy.cluster else None
    if cluster is None:
        return ProxyView(
            address=address,
            epoch=meta.global_epoch,
            cluster_name=None,
            nodes=[],
            free_nodes=list(proxy.node_addresses),
            peers=[],
            clusters_config={},
        )
    view = chunks.cluster_view(cluster)
    peers: dict[str, PeerProxy] = {}
    for node in view.nodes:
        if node.repl.role is not Role.MASTER or node.proxy_address == address:
            continue
        peer = peers.setdefault(
            node.proxy_address,
            PeerProxy(proxy_address=node.proxy_address, cluster_name=view.name, slots=[]),
        )
        peer.slots += node.slots
    return ProxyView(
        address=address,
        epoch=view.epoch,
        cluster_name=view.name,
        nodes=[n for n in view.nodes if n.proxy_address == address],
        free_nodes=[],
        peers=list(peers.values()),
        clusters_config={view.name: view.config},
    )


def epoch_problem(meta: BrokerMeta) -> str | None:
    epochs = [("global_epoch", meta.global_epoch)]
    epochs += [(f"the epoch of cluster {c.name}", c.epoch) for c in meta.clusters.values()]
    for what, epoch in epochs:
        if not 0 <= epoch <= U64_MAX:
            return f"{what} {epoch} is not within 0-{U64_MAX}"
    return None


def meta_problem(meta: BrokerMeta) -> str | None:
    """Why restored metadata could not be the broker's own, if it could not: every
    cluster in whole chunks of proxies it holds, and each proxy in the cluster it names."""
    for key, proxy in meta.all_proxies.items():
        if proxy.proxy_address != key:
            return f"all_proxies[{key!r}] is proxy {proxy.proxy_address!r}"
        if proxy.cluster is not None and proxy.cluster not in meta.clusters:
            return f"proxy {key} is in cluster {proxy.cluster!r}, which is not in clusters"
    for key, cluster in meta.clusters.items():
        try:
            validate_cluster_name(key)
        except BrokerError:
            return f"invalid cluster name {key!r}"
        if cluster.name != key:
            return f"clusters[{key!r}] is named {cluster.name!r}"
        if len(cluster.nodes) % CHUNK_NODES:
            return f"cluster {key} has {len(cluster.nodes)} nodes: not whole chunks of 4"
        seen: set[str] = set()
        for i in range(0, len(cluster.nodes), 2):
            pair = cluster.nodes[i : i + 2]
            address = pair[0].proxy_address
            proxy = meta.all_proxies.get(address)
            if proxy is None:
                return f"cluster {key} uses proxy {address}, which is not in all_proxies"
            if proxy.cluster != key:
                return f"cluster {key} uses proxy {address}, which is in {proxy.cluster!r}"
            if address in seen:
                return f"cluster {key} uses proxy {address} twice"
            seen.add(address)
            for k, node in enumerate(pair):
                if node.proxy_address != address or node.address != proxy.node_addresses[k]:
                    return f"node {node.address} of cluster {key} is not node {k} of {address}"
                if node.cluster_name != key:
                    return f"node {node.address} of cluster {key} names {node.cluster_name!r}"
        owned = {a for a, p in meta.all_proxies.items() if p.cluster == key}
        if owned != seen:
            return f"proxies {sorted(owned - seen)} name cluster {key} but are not in it"
    return None


# ---- the seed's Memory Broker API ------------------------------------------------------


@router.get(
    "/version",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {"example": UNDERMOON_VERSION}}}},
)
async def version() -> PlainTextResponse:
    """The undermoon version this broker speaks for, as plain text."""
    return PlainTextResponse(UNDERMOON_VERSION)


@router.get(
    "/metadata", responses={200: {"content": {"application/json": {"example": META_EXAMPLE}}}}
)
async def get_metadata(broker: BrokerDep) -> BrokerMeta:
    """All the broker's metadata (not a stable API: for debugging and replication)."""
    return await broker.meta()


@router.put(
    "/metadata",
    response_model=None,
    responses={
        **CHANGED,
        **refusals(INVALID_REQUEST, C.INVALID_META_VERSION, C.EPOCH_SMALLER_THAN_CURRENT, C.RETRY),
    },
    openapi_extra=body_doc(
        BrokerMeta, "Metadata as GET /api/v2/metadata answers it", examples=[META_EXAMPLE]
    ),
)
async def restore_metadata(request: Request, broker: BrokerDep) -> Response:
    """Replace all the metadata. 409 INVALID_META_VERSION for a document that is not
    ``mem-broker-0.1`` metadata, RETRY while operations run, EPOCH_SMALLER_THAN_CURRENT
    for metadata older than the broker's."""
    try:
        data = await read_json(request)
    except ValueError as exc:
        raise BrokerError(C.INVALID_META_VERSION, str(exc)) from None
    version = data.get("version") if isinstance(data, dict) else None
    if version != META_VERSION:
        raise BrokerError(
            C.INVALID_META_VERSION, f"metadata version {version!r} is not {META_VERSION!r}"
        )
    try:
        meta = validate_json(BrokerMeta, data)
    except ValidationError as exc:
        raise ApiError(f"invalid metadata: {problems(exc)}") from None
    problem = epoch_problem(meta) or meta_problem(meta)
    if problem:
        raise ApiError(f"invalid metadata: {problem}")
    return changed(await broker.update(BrokerWorkflow.restore_meta, RestoreRequest(meta=meta)))


@router.get(
    "/clusters/info/{cluster_name:whole}",
    responses={
        200: {"content": {"application/json": {"example": CLUSTER_INFO_EXAMPLE}}},
        **refusals(C.INVALID_CLUSTER_NAME, C.CLUSTER_NOT_FOUND),
    },
)
async def cluster_info(cluster_name: ClusterName, broker: BrokerDep) -> ClusterInfo:
    """Node numbers, and whether slots are moving."""
    validate_cluster_name(cluster_name)
    return chunks.cluster_info(chunks.get_cluster(await broker.meta(), cluster_name))


@router.post(
    "/clusters/meta/{cluster_name:whole}",
    response_model=None,
    responses={
        **CHANGED,
        **refusals(
            C.INVALID_CLUSTER_NAME,
            C.INVALID_NODE_NUMBER,
            C.ALREADY_EXISTED,
            C.NO_AVAILABLE_RESOURCE,
            C.RESOURCE_NOT_BALANCE,
            C.RETRY,
        ),
    },
    openapi_extra=body_doc(CreateClusterBody),
)
async def create_cluster(
    cluster_name: ClusterName, request: Request, broker: BrokerDep
) -> Response:
    """Create a cluster of ``node_number`` nodes on free proxies; answers once its
    operation (forming the Redis cluster) has started."""
    validate_cluster_name(cluster_name)
    body = await body_of(request, CreateClusterBody, C.INVALID_NODE_NUMBER)
    node_number = validate_node_number(body.node_number)
    req = CreateClusterRequest(name=cluster_name, node_number=node_number)
    return changed(await broker.update(BrokerWorkflow.create_cluster, req))


@router.delete(
    "/clusters/meta/{cluster_name:whole}",
    response_model=None,
    responses={**CHANGED, **refusals(C.INVALID_CLUSTER_NAME, C.CLUSTER_NOT_FOUND, C.RETRY)},
)
async def delete_cluster(cluster_name: ClusterName, broker: BrokerDep) -> Response:
    """Delete a cluster; its proxies are free again once their nodes are reset."""
    validate_cluster_name(cluster_name)
    req = ClusterRequest(name=cluster_name)
    return changed(await broker.update(BrokerWorkflow.delete_cluster, req))


NODE_REFUSALS = (
    C.INVALID_CLUSTER_NAME,
    C.INVALID_NODE_NUMBER,
    C.CLUSTER_NOT_FOUND,
    C.ALREADY_EXISTED,
    C.NO_AVAILABLE_RESOURCE,
    C.RESOURCE_NOT_BALANCE,
    C.MIGRATION_RUNNING,
    C.NODE_NUMBER_CHANGING,
    C.RETRY,
)


@router.patch(
    "/clusters/nodes/{cluster_name:whole}",
    response_model=None,
    responses={**CHANGED, **refusals(*NODE_REFUSALS)},
    openapi_extra=body_doc(AddNodesBody),
)
async def add_nodes(cluster_name: ClusterName, request: Request, broker: BrokerDep) -> Response:
    """Add ``node_number`` nodes, holding no slot until a migration (expand)."""
    validate_cluster_name(cluster_name)
    body = await body_of(request, AddNodesBody, C.INVALID_NODE_NUMBER)
    req = NodesRequest(name=cluster_name, count=validate_node_number(body.node_number))
    return changed(await broker.update(BrokerWorkflow.add_nodes, req))


@router.put(
    "/clusters/nodes/{cluster_name:whole}",
    response_model=None,
    responses={**CHANGED, **refusals(C.NODE_NUM_ALREADY_ENOUGH, *NODE_REFUSALS)},
    openapi_extra=body_doc(ScaleUpNodesBody),
)
async def add_nodes_if_needed(
    cluster_name: ClusterName, request: Request, broker: BrokerDep
) -> Response:
    """Grow the cluster to ``cluster_node_number`` nodes (idempotent: 409
    NODE_NUM_ALREADY_ENOUGH when it has that many)."""
    validate_cluster_name(cluster_name)
    body = await body_of(request, ScaleUpNodesBody, C.INVALID_NODE_NUMBER)
    count = validate_node_number(body.cluster_node_number)
    req = NodesRequest(name=cluster_name, count=count)
    return changed(await broker.update(BrokerWorkflow.add_nodes_if_needed, req))


@router.delete(
    "/clusters/free_nodes/{cluster_name:whole}",
    response_model=None,
    responses={
        **CHANGED,
        **refusals(
            C.INVALID_CLUSTER_NAME,
            C.CLUSTER_NOT_FOUND,
            C.FREE_NODE_NOT_FOUND,
            C.MIGRATION_RUNNING,
            C.NODE_NUMBER_CHANGING,
            C.RETRY,
        ),
    },
)
async def delete_free_nodes(cluster_name: ClusterName, broker: BrokerDep) -> Response:
    """Remove the chunks whose masters hold no slot; answers once their nodes are out of
    the Redis cluster."""
    validate_cluster_name(cluster_name)
    req = ClusterRequest(name=cluster_name)
    return changed(await broker.update(BrokerWorkflow.delete_free_nodes, req))


@router.post(
    "/clusters/migrations/auto/{cluster_name:whole}/{node_number}",
    response_model=None,
    responses={
        **CHANGED,
        **refusals(
            C.INVALID_CLUSTER_NAME,
            C.INVALID_NODE_NUMBER,
            C.CLUSTER_NOT_FOUND,
            C.MIGRATION_RUNNING,
            C.NO_AVAILABLE_RESOURCE,
            C.RESOURCE_NOT_BALANCE,
            C.NODE_NUMBER_CHANGING,
            C.RETRY,
        ),
    },
)
async def auto_scale(
    cluster_name: ClusterName,
    node_number: Annotated[str, PathNodeNumber],
    broker: BrokerDep,
) -> Response:
    """Scale to ``node_number`` nodes: out, add nodes and start the migration once they
    are up; down, start the migration only (the nodes stay until free nodes are
    deleted)."""
    validate_cluster_name(cluster_name)
    req = MigrateRequest(
        name=cluster_name, mode=MigrateMode.AUTO, node_number=node_number_in_path(node_number)
    )
    return changed(await broker.update(BrokerWorkflow.migrate, req))


@router.post(
    "/clusters/migrations/expand/{cluster_name:whole}",
    response_model=None,
    responses={
        **CHANGED,
        **refusals(
            C.INVALID_CLUSTER_NAME,
            C.CLUSTER_NOT_FOUND,
            C.FREE_NODE_NOT_FOUND,
            C.MIGRATION_RUNNING,
            C.NODE_NUMBER_CHANGING,
            C.RETRY,
        ),
    },
)
async def expand(cluster_name: ClusterName, broker: BrokerDep) -> Response:
    """Spread the slots over every master, the nodes added last included."""
    validate_cluster_name(cluster_name)
    req = MigrateRequest(name=cluster_name, mode=MigrateMode.EXPAND)
    return changed(await broker.update(BrokerWorkflow.migrate, req))


@router.post(
    "/clusters/migrations/shrink/{cluster_name:whole}/{new_cluster_nodes_number}",
    response_model=None,
    responses={
        **CHANGED,
        **refusals(
            C.INVALID_CLUSTER_NAME,
            C.INVALID_NODE_NUMBER,
            C.CLUSTER_NOT_FOUND,
            C.FREE_NODE_FOUND,
            C.MIGRATION_RUNNING,
            C.NODE_NUMBER_CHANGING,
            C.RETRY,
        ),
    },
)
async def shrink(
    cluster_name: ClusterName,
    new_cluster_nodes_number: Annotated[str, PathNodeNumber],
    broker: BrokerDep,
) -> Response:
    """Move every slot to the first ``new_cluster_nodes_number`` nodes (the others stay,
    free, until free nodes are deleted)."""
    validate_cluster_name(cluster_name)
    node_number = node_number_in_path(new_cluster_nodes_number)
    req = MigrateRequest(name=cluster_name, mode=MigrateMode.SHRINK, node_number=node_number)
    return changed(await broker.update(BrokerWorkflow.migrate, req))


@router.patch(
    "/clusters/config/{cluster_name:whole}",
    response_model=None,
    responses={
        **CHANGED,
        **refusals(C.INVALID_CLUSTER_NAME, C.CLUSTER_NOT_FOUND, C.INVALID_CONFIG, C.RETRY),
    },
    openapi_extra=body_doc(
        CLUSTER_CONFIG_SCHEMA,
        "The fields to change; any other key is refused with INVALID_CONFIG",
    ),
)
async def change_cluster_config(
    cluster_name: ClusterName, request: Request, broker: BrokerDep
) -> Response:
    """Change ``compression_strategy`` (or ``migration_limit``); any other key, or a bad
    value, is 409 INVALID_CONFIG with the key and value."""
    validate_cluster_name(cluster_name)
    try:
        fields = await read_json(request)
    except ValueError as exc:
        raise BrokerError(C.INVALID_CONFIG, str(exc), key="", value="") from None
    if not isinstance(fields, dict):
        shown = json.dumps(fields)[:100]
        raise BrokerError(C.INVALID_CONFIG, "expected a JSON object", key="", value=shown)
    req = ClusterConfigRequest(name=cluster_name, fields=fields)
    return changed(await broker.update(BrokerWorkflow.set_cluster_config, req))


@router.post(
    "/proxies/meta",
    response_model=None,
    responses={**CHANGED, **refusals(C.INVALID_PROXY_ADDRESS, C.ALREADY_EXISTED, C.RETRY)},
    openapi_extra=body_doc(AddProxyBody),
)
async def add_proxy(request: Request, broker: BrokerDep) -> Response:
    """Register a free proxy (two Redis nodes). Adding a proxy known as failed makes it
    healthy again."""
    body = await body_of(request, AddProxyBody, C.INVALID_PROXY_ADDRESS)
    address, nodes = validate_proxy(body.proxy_address, body.nodes)
    texts = [address, *nodes, body.host or "x"]
    if any(len(t) > MAX_ADDRESS_LEN for t in texts) or body.host == "":
        raise BrokerError(C.INVALID_PROXY_ADDRESS, "addresses and host: 1-300 characters")
    req = AddProxyRequest(proxy_address=address, nodes=list(nodes), host=body.host)
    return changed(await broker.update(BrokerWorkflow.add_proxy, req))


@router.delete(
    "/proxies/meta/{proxy_address:whole}",
    response_model=None,
    responses={**CHANGED, **refusals(C.PROXY_NOT_FOUND, C.IN_USE, C.RETRY)},
)
async def remove_proxy(proxy_address: ProxyAddress, broker: BrokerDep) -> Response:
    """Forget a free proxy (409 IN_USE while a cluster uses it)."""
    req = ProxyRequest(proxy_address=proxy_address)
    return changed(await broker.update(BrokerWorkflow.remove_proxy, req))


@router.put(
    "/clusters/balance/{cluster_name:whole}",
    response_model=None,
    responses={**CHANGED, **refusals(C.INVALID_CLUSTER_NAME, C.CLUSTER_NOT_FOUND, C.RETRY)},
)
async def balance(cluster_name: ClusterName, broker: BrokerDep) -> Response:
    """Move masters back to their home nodes after failovers (chunks with no failed
    proxy)."""
    validate_cluster_name(cluster_name)
    req = ClusterRequest(name=cluster_name)
    return changed(await broker.update(BrokerWorkflow.balance, req))


@router.get("/epoch", responses={200: {"content": {"application/json": {"example": 42}}}})
async def get_epoch(broker: BrokerDep) -> int:
    """The global epoch."""
    return (await broker.meta()).global_epoch


@router.put(
    "/epoch/recovery",
    response_model=None,
    responses={
        200: {
            "description": "The proxies whose epoch could not be read: none here",
            "content": {
                "application/json": {
                    "schema": {"type": "array", "items": {"type": "string"}, "maxItems": 0},
                    "example": [],
                }
            },
        }
    },
)
async def recover_epoch(broker: BrokerDep) -> Response:
    """undermoon's hidden recovery: bump every epoch above the broker's own."""
    reply = await broker.update(BrokerWorkflow.bump_epoch, EpochRequest())
    return JSONResponse([], headers={"X-Broker-Epoch": str(reply.epoch)})


@router.put(
    "/epoch/{new_epoch}",
    response_model=None,
    responses={**CHANGED, **refusals(INVALID_REQUEST, C.EPOCH_SMALLER_THAN_CURRENT)},
)
async def bump_epoch(
    new_epoch: Annotated[
        str,
        Path(
            description="An integer above the global epoch (else EPOCH_SMALLER_THAN_CURRENT)",
            json_schema_extra={"type": "integer", "minimum": 0, "maximum": U64_MAX},
        ),
    ],
    broker: BrokerDep,
) -> Response:
    """Set every epoch to ``new_epoch``, which must be larger than the global epoch (after
    a failover left the metadata stale)."""
    text = new_epoch.strip()
    # One sign at most: "-+5" passed a check of the digits after both and broke int().
    if not EPOCH_RE.fullmatch(text):
        raise ApiError(f"invalid epoch {new_epoch[:40]!r}: expected an integer")
    epoch = int(text)
    if epoch < 0:
        raise BrokerError(C.EPOCH_SMALLER_THAN_CURRENT, f"epoch {epoch} is negative")
    if epoch > U64_MAX:
        raise ApiError(f"invalid epoch {epoch}: at most {U64_MAX}")
    return changed(await broker.update(BrokerWorkflow.bump_epoch, EpochRequest(epoch=epoch)))


@router.post("/resources/failures/check")
async def check_failures(broker: BrokerDep) -> FailureCheckPayload:
    """Hosts whose failure the free proxies could not make up for: empty means every host
    may fail; otherwise add proxies."""
    meta = await broker.meta()
    return FailureCheckPayload(hosts_cannot_fail=failures.hosts_cannot_fail(meta))


@router.put(
    "/config",
    response_model=None,
    responses={**CHANGED, **refusals(INVALID_REQUEST, C.RETRY)},
    openapi_extra=body_doc(BrokerConfigBody),
)
async def change_broker_config(request: Request, broker: BrokerDep) -> Response:
    """Set ``replica_addresses`` (host:port of brokers the metadata is copied to every
    10 s), and the failure detection settings given."""
    try:
        body = validate_json(BrokerConfigBody, await read_json(request))
    except ValueError as exc:  # ValidationError is one
        detail = problems(exc) if isinstance(exc, ValidationError) else str(exc)
        raise ApiError(f"invalid broker config: {detail}") from None
    bad = [a for a in body.replica_addresses if not valid_address(a) or len(a) > MAX_ADDRESS_LEN]
    if bad:
        raise ApiError(f"invalid replica addresses {bad[:5]}: use host:port")
    given = body.model_dump(exclude_none=True)
    config = (await broker.config()).model_copy(update=given)
    req = BrokerConfigRequest(config=BrokerConfig.model_validate(config.model_dump()))
    return changed(await broker.update(BrokerWorkflow.set_broker_config, req))


@router.get(
    "/config",
    responses={200: {"content": {"application/json": {"example": BROKER_CONFIG_EXAMPLE}}}},
)
async def get_broker_config(broker: BrokerDep) -> BrokerConfig:
    """The broker's config: ``replica_addresses`` as the seed, and failure detection."""
    return await broker.config()


# ---- the base Broker HTTP API ----------------------------------------------------------


@router.get("/clusters/names", responses=refusals(INVALID_REQUEST))
async def cluster_names(
    broker: BrokerDep, offset: Offset = 0, limit: Limit = None
) -> ClusterNamesPayload:
    """The cluster names, sorted; ``offset`` starts from zero."""
    names = sorted((await broker.meta()).clusters)
    return ClusterNamesPayload(names=page(names, offset, limit))


@router.get("/clusters/meta/{cluster_name:whole}", responses=refusals(C.INVALID_CLUSTER_NAME))
async def cluster_meta(cluster_name: ClusterName, broker: BrokerDep) -> ClusterPayload:
    """The cluster's nodes, slots and replication, or ``{"cluster": null}``."""
    validate_cluster_name(cluster_name)
    cluster = (await broker.meta()).clusters.get(cluster_name)
    return ClusterPayload(cluster=chunks.cluster_view(cluster) if cluster else None)


@router.get("/proxies/addresses", responses=refusals(INVALID_REQUEST))
async def proxy_addresses(
    broker: BrokerDep, offset: Offset = 0, limit: Limit = None
) -> AddressesPayload:
    """Every proxy's address, sorted; ``offset`` starts from zero."""
    addresses = sorted((await broker.meta()).all_proxies)
    return AddressesPayload(addresses=page(addresses, offset, limit))


@router.get("/proxies/meta/{proxy_address:whole}")
async def proxy_meta(proxy_address: ProxyAddress, broker: BrokerDep) -> ProxyPayload:
    """The proxy's nodes and its peers' slots, or ``{"proxy": null}``."""
    return ProxyPayload(proxy=proxy_view(await broker.meta(), proxy_address))


@router.post(
    "/failures/{server_proxy_address:whole}/{reporter_id}",
    response_model=None,
    responses={**CHANGED, **refusals(C.INVALID_PROXY_ADDRESS, INVALID_REQUEST, C.RETRY)},
)
async def report_failure(
    server_proxy_address: Annotated[
        str,
        Path(
            description="host:port (else INVALID_PROXY_ADDRESS)",
            examples=["127.0.0.2:7000"],
            json_schema_extra={"pattern": ADDRESS_PATTERN, "maxLength": MAX_ADDRESS_LEN},
        ),
    ],
    reporter_id: Annotated[
        str,
        Path(
            description="The reporter's own id",
            json_schema_extra={"maxLength": MAX_REPORTER_LEN},
        ),
    ],
    broker: BrokerDep,
) -> Response:
    """Report a suspected failure; a proxy fails once ``failure_quorum`` reporters have
    reported it within ``failure_ttl`` seconds."""
    if not valid_address(server_proxy_address) or len(server_proxy_address) > MAX_ADDRESS_LEN:
        raise BrokerError(
            C.INVALID_PROXY_ADDRESS, f"invalid proxy address {server_proxy_address!r}"
        )
    if len(reporter_id) > MAX_REPORTER_LEN:
        raise ApiError(f"reporter id: at most {MAX_REPORTER_LEN} characters")
    req = FailureReportRequest(proxy_address=server_proxy_address, reporter=reporter_id)
    return changed(await broker.update(BrokerWorkflow.report_failure, req))


@router.get("/failures")
async def get_failures(broker: BrokerDep) -> AddressesPayload:
    """Proxies reported by a quorum within the TTL whose failover is still to happen."""
    meta, config = await broker.meta(), await broker.config()
    return AddressesPayload(addresses=failures.failed_proxies(meta, time.time(), config))


@router.post(
    "/proxies/failover/{proxy_address:whole}",
    responses=refusals(C.PROXY_NOT_FOUND, C.NO_AVAILABLE_RESOURCE, C.RETRY),
)
async def failover(proxy_address: ProxyAddress, broker: BrokerDep) -> ProxyPayload:
    """Fail the proxy over: its peers take over its masters and a free proxy takes its
    place. Answers the proxy now in its place, or ``{"proxy": null}`` if it served no
    cluster."""
    before = await broker.meta()
    proxy = before.all_proxies.get(proxy_address)
    cluster = before.clusters.get(proxy.cluster) if proxy and proxy.cluster else None
    position = (
        next((i for i, n in enumerate(cluster.nodes) if n.proxy_address == proxy_address), None)
        if cluster
        else None
    )
    await broker.update(BrokerWorkflow.failover, ProxyRequest(proxy_address=proxy_address))
    if cluster is None or position is None:
        return ProxyPayload(proxy=None)
    after = await broker.meta()
    now = after.clusters.get(cluster.name)
    if now is None or position >= len(now.nodes):
        return ProxyPayload(proxy=None)
    return ProxyPayload(proxy=proxy_view(after, now.nodes[position].proxy_address))


@router.put(
    "/clusters/migrations",
    response_model=None,
    responses={
        **CHANGED,
        **refusals(
            C.INVALID_CLUSTER_NAME,
            C.INVALID_MIGRATION_TASK,
            C.CLUSTER_NOT_FOUND,
            C.MIGRATION_TASK_NOT_FOUND,
            C.RETRY,
        ),
    },
    openapi_extra=body_doc(MigrationTaskBody),
)
async def commit_migration(request: Request, broker: BrokerDep) -> Response:
    """A move is done: its slots become stable on the destination."""
    task = await body_of(request, MigrationTask, C.INVALID_MIGRATION_TASK)
    validate_cluster_name(task.cluster_name)
    if task.slot_range.meta is None:
        raise BrokerError(C.INVALID_MIGRATION_TASK, "the slot range has no migration tag")
    return changed(await broker.update(BrokerWorkflow.commit_migration, CommitRequest(task=task)))


@router.get("/proxies/failed/addresses")
async def failed_proxies(broker: BrokerDep) -> AddressesPayload:
    """Proxies failed over, until they are added again or removed."""
    return AddressesPayload(addresses=list((await broker.meta()).failed_proxies))
