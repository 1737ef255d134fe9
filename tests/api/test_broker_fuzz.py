"""Bad input on every ``/api/v2`` route (hypothesis): never a 5xx, and every error is the
surface's body with the status its code has.

The routes are read from the app itself, so a new route is fuzzed without a change here.
For each: random path parameters (bad names, unicode, huge and negative numbers, empty),
bodies (wrong JSON types, missing fields, text that is not JSON, any content type),
queries and request ids. An answer that is an error must be ``{"error": CODE}`` with the
status the seed gives CODE (``core.broker.errors.HTTP_STATUS``), ``INVALID_CONFIG`` with
its key, value and message, or one of the API's own codes with a message; and CODE must
be one the route documents. Then the refusals the seed names are checked one by one:
INVALID_CLUSTER_NAME, INVALID_NODE_NUMBER (path and body), INVALID_PROXY_ADDRESS,
INVALID_CONFIG, EPOCH_SMALLER_THAN_CURRENT, and bad pagination queries.

A real dev server and worker answer: the routes that reach the broker entity reach it.
Its proxies are stubs that answer PING; one cluster is restored on them, for the cluster
config routes.
"""

from __future__ import annotations

import contextlib
import json
import re
import string
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from starlette.routing import BaseRoute, Match
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment

from scaleflow.api.app import create_app
from scaleflow.api.routes import broker as broker_routes
from scaleflow.api.routes.broker import PREFIX, U64_MAX
from scaleflow.core.broker import clusters
from scaleflow.core.broker.errors import HTTP_STATUS, BrokerErrorCode
from scaleflow.core.broker.models import BrokerMeta
from scaleflow.core.broker.validation import MAX_NODE_NUMBER
from scaleflow.core.settings import Settings
from scaleflow.workflows.broker.models import broker_workflow_id
from tests.api.test_broker_api import HOSTS, Nodes
from tests.e2e.stack import Stack, stack, stack_settings

# Codes of the API's own, each with its status; their bodies carry a message.
OWN_CODES = {"INVALID_REQUEST": 400, "NOT_FOUND": 404, "METHOD_NOT_ALLOWED": 405}
SEED_CODES = {c.value: s for c, s in HTTP_STATUS.items()}
NAME_RE = re.compile(r"[A-Za-z0-9@_-]{1,30}")
# The one cluster that exists: a name the strategies below never produce.
EXISTING = "fz-existing-cluster-0042"
ABSENT = "nope"
EXAMPLES = settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def flat(routes: Sequence[BaseRoute]) -> Iterator[BaseRoute]:
    """The app's routes in matching order, included routers opened (FastAPI keeps an
    included router whole in ``app.routes``)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is None:
            yield route
            continue
        prefix = getattr(getattr(route, "include_context", None), "prefix", "")
        assert not prefix, f"included with prefix {prefix!r}: paths would need it"
        yield from flat(inner.routes)


APP = create_app(Settings())
APP_ROUTES = list(flat(APP.routes))
ROUTES = [
    (route, method)
    for route in APP_ROUTES
    if isinstance(route, APIRoute) and route.path.startswith(PREFIX)
    for method in sorted(route.methods)
]


def route_id(item: tuple[APIRoute, str]) -> str:
    return f"{item[1]} {item[0].path_format}"


def routes_with(param: str) -> list[tuple[APIRoute, str]]:
    return [(r, m) for r, m in ROUTES if f"{{{param}" in r.path]


def route_of(method: str, path: str) -> APIRoute | None:
    """The route Starlette picks for ``path`` (decoded), as its router would."""
    scope = {"type": "http", "method": method, "path": path, "root_path": ""}
    for route in APP_ROUTES:
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return route if isinstance(route, APIRoute) else None
    return None


def documented(route: APIRoute) -> set[str]:
    """The codes a route's OpenAPI answers list (``refusals`` writes "A | B")."""
    codes: set[str] = set()
    for status, doc in route.responses.items():
        if isinstance(status, int) and status >= 400:
            codes |= {c.strip() for c in str(doc.get("description", "")).split("|")}
    return codes


# ---- strategies ----------------------------------------------------------------------------

KEYS = (
    "node_number",
    "cluster_node_number",
    "proxy_address",
    "nodes",
    "host",
    "version",
    "replica_addresses",
    "compression_strategy",
    "migration_limit",
    "cluster_name",
    "slot_range",
    "global_epoch",
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(["8", "127.0.0.2:7000", "mem-broker-0.1", "disabled", ""])
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
raw_bodies = (
    st.binary(max_size=40)
    | st.text(max_size=40).map(str.encode)
    | st.sampled_from([b"{", b"[" * 5000, b"NaN", b'{"node_number": 1e999}', b"node_number=8"])
    | st.integers(min_value=1, max_value=6000).map(lambda n: b'{"node_number": ' + b"9" * n + b"}")
)
bodies: st.SearchStrategy[bytes | None] = (
    st.none() | raw_bodies | json_values.map(lambda v: json.dumps(v).encode())
)
content_types = st.sampled_from(
    [
        None,
        "application/json",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/json; charset=latin-1",
    ]
)
names = (
    st.text(max_size=40)
    | st.text(alphabet=string.ascii_letters + "@_-", min_size=31, max_size=50)
    | st.text(alphabet=string.printable, max_size=12)
    | st.from_regex(NAME_RE, fullmatch=True)
).filter(lambda n: n != EXISTING)
bad_names = names.filter(lambda n: not NAME_RE.fullmatch(n))
numbers = (
    st.integers().map(str)
    | st.integers(min_value=-8, max_value=48).map(str)
    | st.text(max_size=25)
    # Unicode digits (fullwidth 8, Arabic-Indic 4) pass str.isdigit.
    | st.sampled_from(["4.0", "1e3", "0x10", "\uff18", "\u0664", " 8", "8 ", "+8", "-0"])
    | st.sampled_from(["08", "-+8", "+-8", "8\n", "recovery"])
)
addresses = (
    st.text(max_size=30)
    | st.builds(lambda h, p: f"{h}:{p}", st.sampled_from(["127.0.0.2", "h", ""]), st.integers())
    | st.sampled_from(["127.0.0.9:1", "h:x", "h:1:2", ":1"])
)
PARAMS: dict[str, st.SearchStrategy[str]] = {
    "cluster_name": names,
    "node_number": numbers,
    "new_cluster_nodes_number": numbers,
    "new_epoch": numbers,
    "proxy_address": addresses,
    "server_proxy_address": addresses,
    "reporter_id": st.text(max_size=30) | st.text(alphabet="r", min_size=195, max_size=210),
}
queries = st.dictionaries(
    st.sampled_from(["offset", "limit", "x"]),
    st.integers().map(str) | st.text(max_size=8),
    max_size=2,
)
request_ids = st.none() | st.text(
    alphabet=string.ascii_letters + string.digits + "-_.:", max_size=260
)


def segment(value: str) -> str:
    """A path parameter as it goes on the wire: every byte escaped, dots too (a client
    would remove ``.`` and ``..`` segments)."""
    return quote(value, safe="").replace(".", "%2E")


def plain_segment(value: str) -> bool:
    """Stays one path segment, and not another route's literal."""
    return bool(value) and "/" not in value and value.strip(".") != ""


# ---- the stack -----------------------------------------------------------------------------


@dataclass
class Api:
    st: Stack
    name: str

    async def send(
        self,
        method: str,
        route: APIRoute,
        params: dict[str, str],
        body: bytes | None = None,
        content_type: str | None = None,
        query: dict[str, str] | None = None,
        request_id: str | None = None,
    ) -> tuple[httpx.Response, APIRoute | None]:
        """The request, checked against the surface's contract; and the route that
        answered it."""
        path = route.path
        for key, value in params.items():
            path = re.sub(r"\{" + key + r"(:[a-z]+)?\}", lambda _m, v=value: segment(v), path)
        headers = {}
        if content_type is not None:
            headers["content-type"] = content_type
        if request_id is not None:
            headers["X-Request-ID"] = request_id
        resp = await self.st.http.request(
            method, path, content=body, params=query or None, headers=headers
        )
        answered = route_of(method, unquote(path))
        check_answer(resp, answered, f"{method} {path} {body!r:.200} {query} -> ")
        return resp, answered


def check_answer(resp: httpx.Response, route: APIRoute | None, what: str) -> None:
    what += f"{resp.status_code} {resp.text[:300]}"
    assert resp.status_code < 500, what
    # 307: Starlette's redirect of a trailing slash.
    if resp.status_code in (200, 307):
        return
    body = resp.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str), what
    code = body["error"]
    if code in SEED_CODES:
        assert resp.status_code == SEED_CODES[code], what
        if code == BrokerErrorCode.INVALID_CONFIG:
            assert set(body) == {"error", "key", "value", "message"}, what
            assert all(isinstance(v, str) for v in body.values()), what
        else:
            assert body == {"error": code}, what
        assert route is not None and code in documented(route), f"undocumented: {what}"
    else:
        assert OWN_CODES.get(code) == resp.status_code, what
        assert set(body) == {"error", "message"} and body["message"], what


@pytest.fixture(scope="module")
async def api(
    dev_env: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Api]:
    name = f"fz{uuid.uuid4().hex[:8]}"
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    settings_ = stack_settings(tmp, dev_env.client, broker_name=name)
    nodes = Nodes()
    try:
        async with stack(settings_, dev_env.client) as st_:
            try:
                await restore_a_cluster(st_, nodes)
                yield Api(st=st_, name=name)
            finally:
                handle = st_.client.get_workflow_handle(broker_workflow_id(name))
                with contextlib.suppress(Exception):
                    await handle.terminate("test finished")
    finally:
        nodes.close()


async def restore_a_cluster(st_: Stack, nodes: Nodes) -> None:
    """Two stub proxies, both in cluster ``EXISTING``: no proxy is free, so no request
    here can make a cluster (whose operation the stubs could not carry out). No automatic
    failover either: the stubs are no Redis to fail over."""
    body = {"replica_addresses": [], "auto_failover": False}
    resp = await st_.http.put(f"{PREFIX}/config", json=body)
    assert resp.status_code == 200, resp.text
    for host in HOSTS:
        resp = await st_.http.post(f"{PREFIX}/proxies/meta", json=await nodes.proxy(host))
        assert resp.status_code == 200, resp.text
    resp = await st_.http.get(f"{PREFIX}/metadata")
    meta = clusters.create_cluster(BrokerMeta.model_validate(resp.json()), EXISTING, 4)
    resp = await st_.http.put(f"{PREFIX}/metadata", json=meta.model_dump(mode="json"))
    assert resp.status_code == 200, resp.text


# ---- every route, anything ---------------------------------------------------------------------


def test_every_route_is_fuzzed() -> None:
    """The routes come from the app: the broker's, and every one documents its codes."""
    assert len(ROUTES) >= 30, [route_id(r) for r in ROUTES]
    assert len(NUMBER_BODY_ROUTES) == len(NUMBER_BODIES)
    for route, _ in ROUTES:
        unknown = documented(route) - set(SEED_CODES) - set(OWN_CODES)
        assert not unknown, (route.path, unknown)
        assert all(p in PARAMS for p in route.param_convertors), route.path


@pytest.mark.parametrize("item", ROUTES, ids=[route_id(r) for r in ROUTES])
@EXAMPLES
@given(data=st.data())
async def test_any_input_on_any_route(
    api: Api, item: tuple[APIRoute, str], data: st.DataObject
) -> None:
    route, method = item
    params = {p: data.draw(PARAMS[p], label=p) for p in route.param_convertors}
    await api.send(
        method,
        route,
        params,
        body=data.draw(bodies, label="body"),
        content_type=data.draw(content_types, label="content_type"),
        query=data.draw(queries, label="query"),
        request_id=data.draw(request_ids, label="request_id"),
    )


# ---- each refusal the seed names --------------------------------------------------------------


@pytest.mark.parametrize(
    "item", routes_with("cluster_name"), ids=[route_id(r) for r in routes_with("cluster_name")]
)
@EXAMPLES
@given(data=st.data())
async def test_a_bad_cluster_name_is_refused_first(
    api: Api, item: tuple[APIRoute, str], data: st.DataObject
) -> None:
    """Checked before anything else the request carries."""
    route, method = item
    params = {p: data.draw(numbers.filter(plain_segment), label=p) for p in route.param_convertors}
    params["cluster_name"] = data.draw(bad_names, label="cluster_name")
    body = data.draw(bodies, label="body")
    resp, answered = await api.send(method, route, params, body=body)
    assert answered is route
    assert (resp.status_code, resp.json()) == (400, {"error": "INVALID_CLUSTER_NAME"}), resp.text


def valid_node_number(value: Any) -> bool:
    return (
        isinstance(value, int)
        and not isinstance(value, bool)
        and 0 < value <= MAX_NODE_NUMBER
        and value % 4 == 0
    )


def number_in_path(text: str) -> int | None:
    return int(text) if re.fullmatch(r"[0-9]{1,20}", text) else None


PATH_NUMBER_ROUTES = routes_with("node_number") + routes_with("new_cluster_nodes_number")


@pytest.mark.parametrize("item", PATH_NUMBER_ROUTES, ids=[route_id(r) for r in PATH_NUMBER_ROUTES])
@EXAMPLES
@given(text=numbers.filter(plain_segment))
async def test_node_numbers_in_the_path(api: Api, item: tuple[APIRoute, str], text: str) -> None:
    """INVALID_NODE_NUMBER before the cluster is looked for."""
    route, method = item
    params = {p: text for p in route.param_convertors}
    params["cluster_name"] = ABSENT
    resp, _ = await api.send(method, route, params)
    if valid_node_number(number_in_path(text)):
        expected = (404, {"error": "CLUSTER_NOT_FOUND"})
    else:
        expected = (400, {"error": "INVALID_NODE_NUMBER"})
    assert (resp.status_code, resp.json()) == expected, (text, resp.text)


NUMBER_BODIES = {
    ("POST", f"{PREFIX}/clusters/meta/{{cluster_name}}"): "node_number",
    ("PATCH", f"{PREFIX}/clusters/nodes/{{cluster_name}}"): "node_number",
    ("PUT", f"{PREFIX}/clusters/nodes/{{cluster_name}}"): "cluster_node_number",
}
NUMBER_BODY_ROUTES = [(r, m) for r, m in ROUTES if (m, r.path_format) in NUMBER_BODIES]


def parsed(body: bytes | None) -> Any:
    """The body as JSON, or ``ValueError`` for anything else (NaN and infinities too)."""
    if body is None:
        raise ValueError("no body")
    value = json.loads(body)
    json.dumps(value, allow_nan=False)
    return value


@pytest.mark.parametrize("item", NUMBER_BODY_ROUTES, ids=[route_id(r) for r in NUMBER_BODY_ROUTES])
@EXAMPLES
@given(data=st.data())
async def test_node_numbers_in_the_body(
    api: Api, item: tuple[APIRoute, str], data: st.DataObject
) -> None:
    route, method = item
    key = NUMBER_BODIES[(method, route.path_format)]
    focused = st.dictionaries(st.just(key) | st.text(max_size=4), json_values, max_size=2).map(
        lambda d: json.dumps(d).encode()
    )
    body = data.draw(bodies | focused, label="body")
    try:
        value = parsed(body)
    except (ValueError, RecursionError):
        value = None
    valid = isinstance(value, dict) and valid_node_number(value.get(key))
    # A valid create could take proxies: there are none free, but not worth the risk.
    assume(not (valid and method == "POST"))
    ctype = data.draw(content_types, label="content_type")
    resp, _ = await api.send(method, route, {"cluster_name": ABSENT}, body, ctype)
    expected = (
        (404, {"error": "CLUSTER_NOT_FOUND"}) if valid else (400, {"error": "INVALID_NODE_NUMBER"})
    )
    assert (resp.status_code, resp.json()) == expected, (body, resp.text)


def valid_address(value: Any) -> bool:
    if not isinstance(value, str) or len(value) > 300:
        return False
    found = re.fullmatch(r"([^:]+):([0-9]+)", value)
    return bool(found) and 0 < int(found.group(2)) < 65536


def valid_proxy(value: Any) -> bool:
    if not isinstance(value, dict):
        return False
    nodes, host = value.get("nodes"), value.get("host")
    return (
        valid_address(value.get("proxy_address"))
        and isinstance(nodes, list)
        and len(nodes) == 2
        and all(valid_address(n) for n in nodes)
        and nodes[0] != nodes[1]
        and (host is None or (isinstance(host, str) and 0 < len(host) <= 300))
    )


proxy_bodies = st.fixed_dictionaries(
    {},
    optional={
        "proxy_address": addresses | json_values,
        "nodes": st.lists(addresses, max_size=3) | json_values,
        "host": st.none() | st.text(max_size=5) | json_values,
    },
).map(lambda d: json.dumps(d).encode())


@EXAMPLES
@given(body=bodies | proxy_bodies, ctype=content_types)
async def test_bad_proxies(api: Api, body: bytes | None, ctype: str | None) -> None:
    try:
        valid = valid_proxy(parsed(body))
    except (ValueError, RecursionError):
        valid = False
    assume(not valid)  # a valid one would be registered
    route = next(r for r, m in ROUTES if m == "POST" and r.path == f"{PREFIX}/proxies/meta")
    resp, _ = await api.send("POST", route, {}, body, ctype)
    assert (resp.status_code, resp.json()) == (400, {"error": "INVALID_PROXY_ADDRESS"}), body


CONFIG_FIELDS = {
    "compression_strategy": lambda v: (
        isinstance(v, str) and v.lower() in {"disabled", "set_get_only", "allow_all"}
    ),
    "migration_limit": lambda v: (
        (isinstance(v, int) and not isinstance(v, bool) and v >= 1)
        or (isinstance(v, str) and re.fullmatch(r"[0-9]+", v) is not None and int(v) >= 1)
    ),
}
config_bodies = st.dictionaries(
    st.sampled_from([*CONFIG_FIELDS, "COMPRESSION_STRATEGY", "other"]) | st.text(max_size=5),
    json_values | st.sampled_from(["allow_all", "SET_GET_ONLY", "3", "0", "x"]),
    max_size=2,
).map(lambda d: json.dumps(d).encode())


@EXAMPLES
@given(body=bodies | config_bodies, ctype=content_types)
async def test_cluster_configs(api: Api, body: bytes | None, ctype: str | None) -> None:
    """INVALID_CONFIG (409) with the key and value refused; a valid change is 200."""
    try:
        value = parsed(body)
    except (ValueError, RecursionError):
        value = None
    valid = isinstance(value, dict) and all(
        CONFIG_FIELDS.get(k.lower(), lambda _v: False)(v) for k, v in value.items()
    )
    route = next(r for r, m in ROUTES if m == "PATCH" and "/clusters/config/" in r.path)
    resp, _ = await api.send("PATCH", route, {"cluster_name": EXISTING}, body, ctype)
    if valid:
        assert resp.status_code == 200, (body, resp.text)
        return
    assert resp.status_code == 409 and resp.json()["error"] == "INVALID_CONFIG", (body, resp.text)
    if isinstance(value, dict):
        bad = [k for k, v in value.items() if not CONFIG_FIELDS.get(k.lower(), lambda _v: False)(v)]
        assert resp.json()["key"] in bad, (body, resp.text)


@EXAMPLES
@given(text=numbers.filter(plain_segment) | st.integers(min_value=0).map(str))
async def test_epochs(api: Api, text: str) -> None:
    """An integer above the global epoch is taken; one not above it is
    EPOCH_SMALLER_THAN_CURRENT; anything else (or above 2^64 - 1) is INVALID_REQUEST."""
    assume(text != "recovery")
    current = (await api.st.http.get(f"{PREFIX}/epoch")).json()
    found = re.fullmatch(r"([+-]?)([0-9]{1,20})", text.strip())
    number = int(text.strip()) if found else None
    # Keep the epoch well below 2^64 - 1 for the examples after this one.
    assume(number is None or number <= current or number - current < 10**6 or number > U64_MAX)
    route = next(r for r, m in ROUTES if m == "PUT" and r.path.endswith("{new_epoch}"))
    resp, _ = await api.send("PUT", route, {"new_epoch": text})
    smaller = (409, {"error": "EPOCH_SMALLER_THAN_CURRENT"})
    if number is None or number > U64_MAX:
        assert (resp.status_code, resp.json()["error"]) == (400, "INVALID_REQUEST"), resp.text
    elif number <= current:
        assert (resp.status_code, resp.json()) == smaller, (text, current, resp.text)
    else:
        # The epoch only rises, and the broker's own failure reports may raise it
        # meanwhile: refused only if it rose to ``number``.
        after = (await api.st.http.get(f"{PREFIX}/epoch")).json()
        assert after >= number, (text, current, after)
        if resp.status_code != 200:
            assert (resp.status_code, resp.json()) == smaller, (text, current, resp.text)


meta_bodies = st.fixed_dictionaries(
    {"version": st.just("mem-broker-0.1") | json_values},
    optional={
        # Never above the broker's epoch: a restore that is taken would drop the cluster
        # the other tests use.
        "global_epoch": st.integers(max_value=0) | json_values.filter(lambda v: type(v) is not int),
        "clusters": json_values,
        "all_proxies": json_values,
        "failed_proxies": json_values,
        "failures": json_values,
    },
).map(lambda d: json.dumps(d).encode())


@EXAMPLES
@given(body=bodies | meta_bodies, ctype=content_types)
async def test_metadata_restores(api: Api, body: bytes | None, ctype: str | None) -> None:
    """Not ``mem-broker-0.1`` metadata: 409 INVALID_META_VERSION. Ours but older than
    the broker's: EPOCH_SMALLER_THAN_CURRENT; not consistent: INVALID_REQUEST."""
    try:
        value = parsed(body)
    except (ValueError, RecursionError):
        value = None
    route = next(r for r, m in ROUTES if m == "PUT" and r.path == f"{PREFIX}/metadata")
    resp, _ = await api.send("PUT", route, {}, body, ctype)
    ours = isinstance(value, dict) and value.get("version") == "mem-broker-0.1"
    if not ours:
        assert (resp.status_code, resp.json()) == (409, {"error": "INVALID_META_VERSION"}), body
        return
    got = (resp.status_code, resp.json()["error"])
    assert got in {(400, "INVALID_REQUEST"), (409, "EPOCH_SMALLER_THAN_CURRENT")}, resp.text


@pytest.mark.parametrize("path", ["/clusters/names", "/proxies/addresses"])
@EXAMPLES
@given(query=queries)
async def test_pagination_queries(api: Api, path: str, query: dict[str, str]) -> None:
    """Whole numbers from zero page the list; anything else is INVALID_REQUEST."""
    route = next(r for r, m in ROUTES if r.path == PREFIX + path)
    resp, _ = await api.send("GET", route, {}, query=query)
    bad = [v for k, v in query.items() if k != "x" and re.fullmatch(r"-[0-9]+", v) and int(v) < 0]
    plain = all(re.fullmatch(r"[0-9]+", v) for k, v in query.items() if k != "x")
    if bad:
        assert (resp.status_code, resp.json()["error"]) == (400, "INVALID_REQUEST"), resp.text
    elif plain:
        assert resp.status_code == 200, resp.text


def raising(exc: Exception) -> Callable[[], Coroutine[Any, Any, None]]:
    async def endpoint() -> None:
        raise exc

    return endpoint


async def test_temporal_turning_a_request_away_is_retry() -> None:
    """Temporal refusing for load (RESOURCE_EXHAUSTED, an aborted update) is the seed's
    409 RETRY with Retry-After, as an entity too busy is, not the app's 429."""
    app = FastAPI()
    router = APIRouter(route_class=broker_routes.BrokerRoute)
    refusals = {
        "/exhausted": RPCError("limit", RPCStatusCode.RESOURCE_EXHAUSTED, b""),
        "/aborted": RPCError("workflow update was aborted", RPCStatusCode.UNAVAILABLE, b""),
    }
    for path, exc in refusals.items():
        router.add_api_route(path, raising(exc), methods=["PUT"])
    app.include_router(router)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
        for path in refusals:
            resp = await http.put(path)
            assert (resp.status_code, resp.json()) == (409, {"error": "RETRY"}), resp.text
            assert int(resp.headers["Retry-After"]) > 0
