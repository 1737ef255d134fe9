"""The undermoon memory broker surface (seed 004) under ``/api/v2`` on a real stack (dev
server, API on a port, in-process worker): every route that needs no Redis, through its
happy path, and bad input on every route answered with the seed's status and
``{"error": CODE}``, never a 5xx.

Proxies are registered by the test at addresses where a stub answers PING, so the
broker's failure detection sees them alive. Clusters come from restored metadata (built
with the pure planner): reading them, configuring them and committing a move change
only metadata, no Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from temporalio.testing import WorkflowEnvironment

from scaleflow.api.limits import UpdateBusyError
from scaleflow.api.routes import broker as broker_routes
from scaleflow.core.broker import chunks, clusters, failures, migration, ranges
from scaleflow.core.broker.models import META_VERSION, UNDERMOON_VERSION, BrokerMeta
from scaleflow.workflows.broker.models import broker_workflow_id
from tests.e2e.stack import Stack, stack, stack_settings

V2 = "/api/v2"
# Codes of the API's own (not the seed's): they come with a message.
DETAILED = {"INVALID_REQUEST", "NOT_FOUND", "METHOD_NOT_ALLOWED"}
HOSTS = ("127.0.0.2", "127.0.0.3")


# ---- a stand-in for Redis nodes: answers PING ------------------------------------------


async def _pong(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """RESP: ``+PONG`` to PING, protocol 3 to HELLO (redis-py's default), ``+OK`` to
    anything else (redis-py's CLIENT SETINFO)."""
    try:
        while line := await reader.readline():
            command = b""
            if line.startswith(b"*"):
                for i in range(int(line[1:])):
                    size = int((await reader.readline())[1:])
                    arg = (await reader.readexactly(size + 2))[:-2]
                    if i == 0:
                        command = arg.upper()
            else:
                command = (line.split() or [b""])[0].upper()
            answers = {b"PING": b"+PONG\r\n", b"HELLO": b"%1\r\n$5\r\nproto\r\n:3\r\n"}
            writer.write(answers.get(command, b"+OK\r\n"))
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError, ValueError):
        pass
    finally:
        writer.close()


class Nodes:
    """PING stubs served by a loop on a thread of their own: the test's loop, busy with a
    burst, the API and the worker, could answer late, and a late PONG is a failure
    report (an epoch) to the broker."""

    def __init__(self) -> None:
        self.servers: list[asyncio.Server] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    async def node(self, host: str) -> str:
        started = asyncio.run_coroutine_threadsafe(asyncio.start_server(_pong, host, 0), self._loop)
        server = await asyncio.wrap_future(started)
        self.servers.append(server)
        return f"{host}:{server.sockets[0].getsockname()[1]}"

    async def proxy(self, host: str) -> dict[str, Any]:
        first, second = await self.node(host), await self.node(host)
        return {"proxy_address": first, "nodes": [first, second]}

    async def _shut(self) -> None:
        for server in self.servers:
            server.close()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    def close(self) -> None:
        if self._loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(self._shut(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@dataclass
class Api:
    st: Stack
    nodes: Nodes
    name: str

    @property
    def http(self) -> httpx.AsyncClient:
        return self.st.http

    async def call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        resp = await self.http.request(method, V2 + path, **kw)
        assert resp.status_code < 500, (method, path, resp.status_code, resp.text)
        return resp

    async def ok(self, method: str, path: str, **kw: Any) -> Any:
        resp = await self.call(method, path, **kw)
        assert resp.status_code == 200, (method, path, resp.text)
        return resp.json()

    async def changed(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """A change: 200 with undermoon's ``""`` and the new epoch in a header."""
        resp = await self.call(method, path, **kw)
        assert resp.status_code == 200, (method, path, resp.text)
        assert resp.json() == ""
        assert int(resp.headers["X-Broker-Epoch"]) >= 0
        return resp

    async def refused(self, method: str, path: str, status: int, code: str, **kw: Any) -> dict:
        resp = await self.call(method, path, **kw)
        assert resp.status_code == status, (method, path, resp.status_code, resp.text)
        body = resp.json()
        if code in DETAILED:
            assert body["error"] == code and body["message"], body
        elif code == "INVALID_CONFIG":
            assert set(body) == {"error", "key", "value", "message"}, body
            assert body["error"] == code
        else:
            assert body == {"error": code}, (method, path, body)
        return body

    async def meta(self) -> BrokerMeta:
        return BrokerMeta.model_validate(await self.ok("GET", "/metadata"))

    async def add_proxies(self, per_host: int = 2, hosts: tuple[str, ...] = HOSTS) -> list[str]:
        added = []
        for host in hosts:
            for _ in range(per_host):
                body = await self.nodes.proxy(host)
                await self.changed("POST", "/proxies/meta", json=body)
                added.append(body["proxy_address"])
        return added

    async def restore(self, meta: BrokerMeta) -> None:
        await self.changed("PUT", "/metadata", json=meta.model_dump(mode="json"))


@pytest.fixture
async def api(dev_env: WorkflowEnvironment, tmp_path: Path) -> AsyncIterator[Api]:
    """A stack whose broker is the test's own (a unique name)."""
    name = f"t{uuid.uuid4().hex[:8]}"
    nodes = Nodes()
    settings = stack_settings(tmp_path, dev_env.client, broker_name=name)
    try:
        async with stack(settings, dev_env.client) as st:
            try:
                yield Api(st=st, nodes=nodes, name=name)
            finally:
                handle = st.client.get_workflow_handle(broker_workflow_id(name))
                with contextlib.suppress(Exception):
                    await handle.terminate("test finished")
    finally:
        nodes.close()


# ---- happy paths ---------------------------------------------------------------------------


async def test_version_metadata_epoch_and_config(api: Api) -> None:
    resp = await api.call("GET", "/version")
    assert resp.status_code == 200 and resp.text == UNDERMOON_VERSION
    # Before anything was changed: the seed's empty metadata.
    assert await api.ok("GET", "/metadata") == {
        "version": META_VERSION,
        "global_epoch": 0,
        "clusters": {},
        "all_proxies": {},
        "failed_proxies": [],
        "failures": {},
    }
    assert await api.ok("GET", "/epoch") == 0
    config = await api.ok("GET", "/config")
    assert config["replica_addresses"] == []

    replicas = ["127.0.0.1:17799", "127.0.0.1:27799"]
    await api.changed("PUT", "/config", json={"replica_addresses": replicas})
    config = await api.ok("GET", "/config")
    assert config["replica_addresses"] == replicas
    assert config["auto_failover"] is True
    # scaleflow's own fields keep their value unless given.
    await api.changed(
        "PUT", "/config", json={"replica_addresses": [], "auto_failover": False, "failure_ttl": 30}
    )
    config = await api.ok("GET", "/config")
    assert config["replica_addresses"] == [] and config["auto_failover"] is False
    assert config["failure_ttl"] == 30
    await api.changed("PUT", "/config", json={"replica_addresses": replicas})
    config = await api.ok("GET", "/config")
    assert config["auto_failover"] is False and config["replica_addresses"] == replicas

    await api.changed("PUT", "/epoch/10")
    assert await api.ok("GET", "/epoch") == 10
    assert (await api.meta()).global_epoch == 10
    await api.refused("PUT", "/epoch/10", 409, "EPOCH_SMALLER_THAN_CURRENT")
    await api.refused("PUT", "/epoch/3", 409, "EPOCH_SMALLER_THAN_CURRENT")
    await api.refused("PUT", "/epoch/-1", 409, "EPOCH_SMALLER_THAN_CURRENT")
    resp = await api.call("PUT", "/epoch/recovery")
    assert resp.status_code == 200 and resp.json() == []
    assert await api.ok("GET", "/epoch") == 11
    assert await api.ok("POST", "/resources/failures/check") == {"hosts_cannot_fail": []}


async def test_proxies_add_read_and_delete(api: Api) -> None:
    added = await api.add_proxies()
    meta = await api.meta()
    assert sorted(meta.all_proxies) == sorted(added)
    assert meta.global_epoch == len(added)
    first = meta.all_proxies[added[0]]
    assert first.host == HOSTS[0] and first.cluster is None

    assert await api.ok("GET", "/proxies/addresses") == {"addresses": sorted(added)}
    assert await api.ok("GET", "/proxies/addresses?offset=1&limit=2") == {
        "addresses": sorted(added)[1:3]
    }
    assert await api.ok("GET", "/proxies/addresses?offset=99") == {"addresses": []}
    view = (await api.ok("GET", f"/proxies/meta/{added[0]}"))["proxy"]
    assert view == {
        "address": added[0],
        "epoch": meta.global_epoch,
        "cluster_name": None,
        "nodes": [],
        "free_nodes": list(first.node_addresses),
        "peers": [],
        "clusters_config": {},
    }
    assert await api.ok("GET", "/proxies/meta/127.0.0.9:1") == {"proxy": None}

    # The same proxy again, or another proxy on its nodes.
    body = {"proxy_address": added[0], "nodes": list(first.node_addresses)}
    await api.refused("POST", "/proxies/meta", 409, "ALREADY_EXISTED", json=body)
    other = await api.nodes.node(HOSTS[1])
    body = {"proxy_address": other, "nodes": [other, first.node_addresses[1]]}
    await api.refused("POST", "/proxies/meta", 409, "ALREADY_EXISTED", json=body)
    # An explicit host.
    proxy = await api.nodes.proxy(HOSTS[1])
    await api.changed("POST", "/proxies/meta", json={**proxy, "host": "rack-7"})
    assert (await api.meta()).all_proxies[proxy["proxy_address"]].host == "rack-7"

    await api.changed("DELETE", f"/proxies/meta/{proxy['proxy_address']}")
    await api.refused("DELETE", f"/proxies/meta/{proxy['proxy_address']}", 404, "PROXY_NOT_FOUND")
    assert proxy["proxy_address"] not in (await api.meta()).all_proxies
    # Free proxies on two hosts: any one host may fail.
    assert await api.ok("POST", "/resources/failures/check") == {"hosts_cannot_fail": []}

    # A request sent again with its X-Request-ID gets the first answer; the same id on
    # another route is another request.
    proxy = await api.nodes.proxy(HOSTS[0])
    headers = {"X-Request-ID": f"req-{uuid.uuid4().hex}"}
    first = await api.changed("POST", "/proxies/meta", json=proxy, headers=headers)
    again = await api.changed("POST", "/proxies/meta", json=proxy, headers=headers)
    assert again.headers["X-Broker-Epoch"] == first.headers["X-Broker-Epoch"]
    await api.refused("POST", "/proxies/meta", 409, "ALREADY_EXISTED", json=proxy)
    epoch = int(first.headers["X-Broker-Epoch"]) + 10
    await api.changed("PUT", f"/epoch/{epoch}", headers=headers)
    assert await api.ok("GET", "/epoch") == epoch


async def test_failures_report_list_and_failover(api: Api) -> None:
    added = await api.add_proxies(per_host=1)
    await api.changed("PUT", "/config", json={"replica_addresses": [], "auto_failover": False})

    await api.changed("POST", f"/failures/{added[0]}/coordinator-1")
    await api.changed("POST", f"/failures/{added[0]}/coordinator-2")
    meta = await api.meta()
    assert set(meta.failures[added[0]]) == {"coordinator-1", "coordinator-2"}
    # failure_quorum 1: failed, but not failed over (automatic failover is off).
    assert await api.ok("GET", "/failures") == {"addresses": [added[0]]}
    assert await api.ok("GET", "/proxies/failed/addresses") == {"addresses": []}

    # A free proxy failed over only leaves the pool: no proxy takes its place.
    assert await api.ok("POST", f"/proxies/failover/{added[0]}") == {"proxy": None}
    assert await api.ok("GET", "/proxies/failed/addresses") == {"addresses": [added[0]]}
    assert await api.ok("GET", "/failures") == {"addresses": []}
    await api.refused("POST", "/proxies/failover/127.0.0.9:1", 404, "PROXY_NOT_FOUND")

    # Added again, it is healthy again.
    body = {"proxy_address": added[0], "nodes": list(meta.all_proxies[added[0]].node_addresses)}
    await api.changed("POST", "/proxies/meta", json=body)
    assert await api.ok("GET", "/proxies/failed/addresses") == {"addresses": []}

    # With automatic failover on, a report is enough.
    await api.changed("PUT", "/config", json={"replica_addresses": [], "auto_failover": True})
    await api.changed("POST", f"/failures/{added[1]}/coordinator-1")
    for _ in range(100):
        failed = await api.ok("GET", "/proxies/failed/addresses")
        if failed["addresses"]:
            break
        await asyncio.sleep(0.1)
    assert failed == {"addresses": [added[1]]}


def stable_cluster(meta: BrokerMeta, name: str = "c1") -> BrokerMeta:
    return clusters.create_cluster(meta, name, 4)


async def test_restored_cluster_reads_config_and_refusals(api: Api) -> None:
    added = await api.add_proxies()
    before = await api.meta()
    meta = stable_cluster(before)
    await api.restore(meta)
    assert await api.meta() == meta
    cluster = meta.clusters["c1"]

    assert await api.ok("GET", "/clusters/names") == {"names": ["c1"]}
    assert await api.ok("GET", "/clusters/names?offset=1") == {"names": []}
    assert await api.ok("GET", "/clusters/names?limit=0") == {"names": []}
    shown = (await api.ok("GET", "/clusters/meta/c1"))["cluster"]
    assert shown == chunks.cluster_view(cluster).model_dump(mode="json")
    assert [n["repl"]["role"] for n in shown["nodes"]] == ["master", "replica"] * 2
    assert shown["nodes"][0]["slots"] == [{"range_list": [[0, 8191]], "tag": "None"}]
    assert shown["nodes"][2]["slots"] == [{"range_list": [[8192, 16383]], "tag": "None"}]
    assert shown["nodes"][0]["repl"]["peers"] == [
        {
            "node_address": shown["nodes"][3]["address"],
            "proxy_address": shown["nodes"][3]["proxy_address"],
        }
    ]
    assert shown["config"]["compression_strategy"] == "disabled"
    assert await api.ok("GET", "/clusters/meta/other") == {"cluster": None}
    assert await api.ok("GET", "/clusters/info/c1") == {
        "name": "c1",
        "node_number": 4,
        "node_number_with_slots": 4,
        "is_migrating": False,
    }

    used = cluster.nodes[0].proxy_address
    peer = cluster.nodes[2].proxy_address
    view = (await api.ok("GET", f"/proxies/meta/{used}"))["proxy"]
    assert view["cluster_name"] == "c1" and view["epoch"] == cluster.epoch
    assert [n["address"] for n in view["nodes"]] == [n.address for n in cluster.nodes[:2]]
    assert view["free_nodes"] == []
    assert view["peers"] == [
        {"proxy_address": peer, "cluster_name": "c1", "slots": shown["nodes"][2]["slots"]}
    ]
    assert view["clusters_config"] == {"c1": shown["config"]}
    check = await api.ok("POST", "/resources/failures/check")
    assert check == {"hosts_cannot_fail": failures.hosts_cannot_fail(meta)}

    # Cluster config: metadata only.
    await api.changed("PATCH", "/clusters/config/c1", json={"compression_strategy": "set_get_only"})
    shown = (await api.ok("GET", "/clusters/meta/c1"))["cluster"]
    assert shown["config"]["compression_strategy"] == "set_get_only"
    body = await api.refused(
        "PATCH", "/clusters/config/c1", 409, "INVALID_CONFIG", json={"compression_strategy": "zstd"}
    )
    assert body["key"] == "compression_strategy" and body["value"] == "zstd"
    body = await api.refused("PATCH", "/clusters/config/c1", 409, "INVALID_CONFIG", json={"x": 1})
    assert body["key"] == "x" and body["value"] == "1"
    for bad in ("[1]", '"disabled"', "{", ""):
        await api.refused("PATCH", "/clusters/config/c1", 409, "INVALID_CONFIG", content=bad)

    # Requests that change nothing in Redis: auto to the same size, balance when balanced.
    resp = await api.changed("POST", "/clusters/migrations/auto/c1/4")
    assert "X-Operation-ID" not in resp.headers
    resp = await api.changed("PUT", "/clusters/balance/c1")
    assert "X-Operation-ID" not in resp.headers

    # The seed's conflicts on an existing cluster.
    node_body = {"node_number": 4}
    await api.refused("POST", "/clusters/meta/c1", 409, "ALREADY_EXISTED", json=node_body)
    await api.refused(
        "PUT", "/clusters/nodes/c1", 409, "NODE_NUM_ALREADY_ENOUGH", json={"cluster_node_number": 4}
    )
    await api.refused("POST", "/clusters/migrations/expand/c1", 409, "FREE_NODE_NOT_FOUND")
    await api.refused("DELETE", "/clusters/free_nodes/c1", 409, "FREE_NODE_NOT_FOUND")
    await api.refused("POST", "/clusters/migrations/shrink/c1/4", 400, "INVALID_NODE_NUMBER")
    await api.refused("DELETE", f"/proxies/meta/{used}", 409, "IN_USE")
    # Two free proxies are left: a cluster of 8 nodes needs four.
    await api.refused(
        "POST", "/clusters/meta/c2", 409, "NO_AVAILABLE_RESOURCE", json={"node_number": 8}
    )
    assert len(added) == 4

    # Restoring: not ours, older, or not consistent.
    current = await api.meta()
    doc = current.model_dump(mode="json")
    for version in ("mem-broker-0.2", None, 1):
        await api.refused(
            "PUT", "/metadata", 409, "INVALID_META_VERSION", json={**doc, "version": version}
        )
    without = {k: v for k, v in doc.items() if k != "version"}
    await api.refused("PUT", "/metadata", 409, "INVALID_META_VERSION", json=without)
    for bad in ("", "{", "[]", "null", '"x"'):
        await api.refused("PUT", "/metadata", 409, "INVALID_META_VERSION", content=bad)
    older = {**doc, "global_epoch": current.global_epoch - 1}
    await api.refused("PUT", "/metadata", 409, "EPOCH_SMALLER_THAN_CURRENT", json=older)
    broken = current.model_copy(deep=True)
    broken.clusters["c1"].nodes = broken.clusters["c1"].nodes[:3]
    await api.refused(
        "PUT", "/metadata", 400, "INVALID_REQUEST", json=broken.model_dump(mode="json")
    )
    broken = current.model_copy(deep=True)
    del broken.all_proxies[used]
    await api.refused(
        "PUT", "/metadata", 400, "INVALID_REQUEST", json=broken.model_dump(mode="json")
    )
    for field_, value in (("global_epoch", "x"), ("clusters", []), ("global_epoch", 2**64)):
        await api.refused("PUT", "/metadata", 400, "INVALID_REQUEST", json={**doc, field_: value})
    assert await api.meta() == current


async def test_migration_commit_on_a_restored_migration(api: Api) -> None:
    await api.add_proxies()
    meta = stable_cluster(await api.meta())
    meta = clusters.add_nodes(meta, "c1", 4)
    meta = migration.expand(meta, "c1")
    await api.restore(meta)

    info = await api.ok("GET", "/clusters/info/c1")
    assert info["node_number"] == 8 and info["is_migrating"] is True
    await api.refused(
        "PATCH", "/clusters/nodes/c1", 409, "MIGRATION_RUNNING", json={"node_number": 4}
    )
    await api.refused("DELETE", "/clusters/free_nodes/c1", 409, "MIGRATION_RUNNING")
    await api.refused("POST", "/clusters/migrations/shrink/c1/4", 409, "MIGRATION_RUNNING")

    cluster = meta.clusters["c1"]
    tasks = chunks.running_migrations(cluster)
    assert tasks
    for task in tasks:
        body = task.model_dump(mode="json")
        await api.changed("PUT", "/clusters/migrations", json=body)
        await api.refused("PUT", "/clusters/migrations", 404, "MIGRATION_TASK_NOT_FOUND", json=body)
    stable = {**tasks[0].model_dump(mode="json")}
    stable["slot_range"] = {"range_list": [[0, 1]], "tag": "None"}
    await api.refused("PUT", "/clusters/migrations", 400, "INVALID_MIGRATION_TASK", json=stable)
    gone = {**tasks[0].model_dump(mode="json"), "cluster_name": "nope"}
    await api.refused("PUT", "/clusters/migrations", 404, "CLUSTER_NOT_FOUND", json=gone)
    badname = {**tasks[0].model_dump(mode="json"), "cluster_name": "no pe"}
    await api.refused("PUT", "/clusters/migrations", 400, "INVALID_CLUSTER_NAME", json=badname)
    after = (await api.meta()).clusters["c1"]
    for task in tasks:
        move = task.slot_range.meta
        assert move is not None
        dst = next(n for n in after.nodes if n.address == move.dst_node_address)
        moved = set(ranges.slots(task.slot_range.range_list))
        assert moved <= set(ranges.slots(chunks.stable_ranges(dst)))


async def test_a_terminated_broker_keeps_its_metadata(api: Api) -> None:
    added = await api.add_proxies(per_host=1)
    await api.changed("PUT", "/config", json={"replica_addresses": ["127.0.0.1:17799"]})
    before = await api.meta()
    handle = api.st.client.get_workflow_handle(broker_workflow_id(api.name))
    await handle.terminate("operator")
    # Reads answer from the ended run; the next change starts a run that carries it on.
    assert await api.meta() == before
    await api.changed("PUT", "/epoch/100")
    meta = await api.meta()
    assert sorted(meta.all_proxies) == sorted(added) and meta.global_epoch == 100
    assert (await api.ok("GET", "/config"))["replica_addresses"] == ["127.0.0.1:17799"]


# ---- bad input on every route --------------------------------------------------------------

BAD_NAMES = ("a" * 31, "bad%20name", "na.me", "n%C3%A4me", "a/b", "")
BAD_NUMBERS: tuple[Any, ...] = (0, 3, 6, -4, 2**70, 10**30, "8", 8.0, True, None, [8], {"n": 8})


async def test_bad_cluster_names_and_node_numbers(api: Api) -> None:
    number = {"node_number": 4}
    for name in BAD_NAMES:
        for method, path, kw in (
            ("GET", f"/clusters/info/{name}", {}),
            ("GET", f"/clusters/meta/{name}", {}),
            ("POST", f"/clusters/meta/{name}", {"json": number}),
            ("POST", f"/clusters/meta/{name}", {"content": "{"}),
            ("DELETE", f"/clusters/meta/{name}", {}),
            ("PATCH", f"/clusters/nodes/{name}", {"json": number}),
            ("PUT", f"/clusters/nodes/{name}", {"json": {"cluster_node_number": 4}}),
            ("DELETE", f"/clusters/free_nodes/{name}", {}),
            ("POST", f"/clusters/migrations/auto/{name}/4", {}),
            ("POST", f"/clusters/migrations/expand/{name}", {}),
            ("POST", f"/clusters/migrations/shrink/{name}/4", {}),
            ("PATCH", f"/clusters/config/{name}", {"json": {"compression_strategy": "disabled"}}),
            ("PUT", f"/clusters/balance/{name}", {}),
        ):
            await api.refused(method, path, 400, "INVALID_CLUSTER_NAME", **kw)

    for value in BAD_NUMBERS:
        for method, path, key in (
            ("POST", "/clusters/meta/c1", "node_number"),
            ("PATCH", "/clusters/nodes/c1", "node_number"),
            ("PUT", "/clusters/nodes/c1", "cluster_node_number"),
        ):
            await api.refused(method, path, 400, "INVALID_NODE_NUMBER", json={key: value})
    for method, path in (
        ("POST", "/clusters/meta/c1"),
        ("PATCH", "/clusters/nodes/c1"),
        ("PUT", "/clusters/nodes/c1"),
    ):
        for content in ("", "{", "[]", "4", '{"other": 4}', "NaN", '{"node_number": 1e999}'):
            await api.refused(method, path, 400, "INVALID_NODE_NUMBER", content=content)
        # Form-encoded bodies are read as JSON too (curl -d): still the seed's code.
        headers = {"content-type": "application/x-www-form-urlencoded"}
        await api.refused(
            method, path, 400, "INVALID_NODE_NUMBER", content="node_number=8", headers=headers
        )
    for kind in ("auto", "shrink"):
        for text in ("0", "3", "-4", "abc", "4.0", "9" * 30, "9" * 5000, "%20"):
            path = f"/clusters/migrations/{kind}/c1/{text}"
            await api.refused("POST", path, 400, "INVALID_NODE_NUMBER")

    # No proxies yet: nothing to make a cluster of.
    await api.refused("POST", "/clusters/meta/c1", 409, "NO_AVAILABLE_RESOURCE", json=number)
    # Valid names, no such cluster.
    for method, path, kw in (
        ("GET", "/clusters/info/c1", {}),
        ("DELETE", "/clusters/meta/c1", {}),
        ("PATCH", "/clusters/nodes/c1", {"json": number}),
        ("PUT", "/clusters/nodes/c1", {"json": {"cluster_node_number": 4}}),
        ("DELETE", "/clusters/free_nodes/c1", {}),
        ("POST", "/clusters/migrations/auto/c1/4", {}),
        ("POST", "/clusters/migrations/expand/c1", {}),
        ("POST", "/clusters/migrations/shrink/c1/4", {}),
        ("PATCH", "/clusters/config/c1", {"json": {"compression_strategy": "disabled"}}),
        ("PUT", "/clusters/balance/c1", {}),
    ):
        await api.refused(method, path, 404, "CLUSTER_NOT_FOUND", **kw)
    assert await api.ok("GET", "/clusters/meta/c1") == {"cluster": None}
    # 30 characters of every allowed kind is a name.
    await api.refused("GET", "/clusters/info/" + "aZ09@_-" * 4 + "xy", 404, "CLUSTER_NOT_FOUND")


async def test_bad_proxies_epochs_configs_and_queries(api: Api) -> None:
    good = await api.nodes.proxy(HOSTS[0])
    address = good["proxy_address"]
    bad_bodies: list[Any] = [
        {**good, "proxy_address": "nohost"},
        {**good, "proxy_address": ":7000"},
        {**good, "proxy_address": "h:70000"},
        {**good, "proxy_address": "h:0"},
        {**good, "proxy_address": "h:7:0"},
        {**good, "proxy_address": 7000},
        {**good, "proxy_address": None},
        {**good, "proxy_address": "h" * 400 + ":1"},
        {**good, "nodes": [address]},
        {**good, "nodes": [address, address]},
        {**good, "nodes": [address, "x"]},
        {**good, "nodes": "127.0.0.2:1,127.0.0.2:2"},
        {**good, "nodes": [address, 7001]},
        {**good, "host": ""},
        {**good, "host": 5},
        {"nodes": good["nodes"]},
        {"proxy_address": address},
        [good],
        "x",
    ]
    for body in bad_bodies:
        await api.refused("POST", "/proxies/meta", 400, "INVALID_PROXY_ADDRESS", json=body)
    for content in ("", "{", "NaN"):
        await api.refused("POST", "/proxies/meta", 400, "INVALID_PROXY_ADDRESS", content=content)
    await api.refused("DELETE", f"/proxies/meta/{address}", 404, "PROXY_NOT_FOUND")
    await api.refused("DELETE", "/proxies/meta/", 404, "PROXY_NOT_FOUND")
    await api.refused("POST", f"/proxies/failover/{address}", 404, "PROXY_NOT_FOUND")
    for bad in ("nohost", "h:x", "h:1:2"):
        await api.refused("POST", f"/failures/{bad}/r1", 400, "INVALID_PROXY_ADDRESS")
    await api.refused("POST", f"/failures/{address}/{'r' * 300}", 400, "INVALID_REQUEST")

    for text in ("abc", "1.5", "9" * 30, "18446744073709551616", "%20"):
        await api.refused("PUT", f"/epoch/{text}", 400, "INVALID_REQUEST")
    await api.changed("PUT", "/epoch/18446744073709551615")
    await api.refused("PUT", "/epoch/18446744073709551615", 409, "EPOCH_SMALLER_THAN_CURRENT")

    for body in (
        {},
        {"replica_addresses": "127.0.0.1:1"},
        {"replica_addresses": [1]},
        {"replica_addresses": ["not an address"]},
        {"replica_addresses": [], "failure_quorum": 0},
        {"replica_addresses": [], "failure_quorum": "2"},
        {"replica_addresses": [], "failure_ttl": -1},
        {"replica_addresses": [], "auto_failover": "no"},
        {"replica_addresses": [], "other": 1},
        [],
    ):
        await api.refused("PUT", "/config", 400, "INVALID_REQUEST", json=body)
    for content in ("", "{", "NaN"):
        await api.refused("PUT", "/config", 400, "INVALID_REQUEST", content=content)

    for query in ("offset=-1", "limit=-1", "offset=x", "limit=1.5"):
        for path in ("/clusters/names", "/proxies/addresses"):
            await api.refused("GET", f"{path}?{query}", 400, "INVALID_REQUEST")
    headers = {"X-Request-ID": "r" * 300}
    await api.refused("GET", "/epoch", 400, "INVALID_REQUEST", headers=headers)

    for body in (
        {},
        {"cluster_name": "c1"},
        {"cluster_name": "c1", "slot_range": {"range_list": [[5, 1]]}},
        [],
        "x",
    ):
        await api.refused("PUT", "/clusters/migrations", 400, "INVALID_MIGRATION_TASK", json=body)
    await api.refused("PUT", "/clusters/migrations", 400, "INVALID_MIGRATION_TASK", content="{")

    # Not a route, or not this method: still the surface's body.
    await api.refused("GET", "/nothing", 404, "NOT_FOUND")
    await api.refused("DELETE", "/version", 405, "METHOD_NOT_ALLOWED")
    await api.refused("GET", "/clusters/balance/c1", 405, "METHOD_NOT_ALLOWED")


GARBAGE_PARAMS = ("c1", "", "a b", "%00", "x" * 500, "-1", "9" * 40, "127.0.0.2:1", "%2F..")
GARBAGE_BODIES: tuple[str | None, ...] = (
    None,
    "{",
    "null",
    '[{"node_number": 4}]',
    '{"node_number": [], "cluster_node_number": {}, "proxy_address": 1, "version": 2}',
    '{"replica_addresses": [null], "slot_range": 1, "cluster_name": []}',
    "[" * 100_000,
    '{"node_number": ' + "9" * 5000 + "}",
    '{"version": "mem-broker-0.1", "clusters": {"c": 1}}',
)


async def test_no_input_gets_a_5xx(api: Api) -> None:
    """Every route, every method, garbage in its path and body: a 4xx in the surface's
    format (or a 200), never a 5xx."""
    await api.add_proxies(per_host=1)
    for route in broker_routes.router.routes:
        path = getattr(route, "path", "")
        for method in sorted(getattr(route, "methods", ())):
            for param in GARBAGE_PARAMS:
                url = re.sub(r"\{[^}]*\}", param.replace("\\", ""), path).removeprefix(V2)
                for body in GARBAGE_BODIES if method in ("POST", "PUT", "PATCH") else (None,):
                    resp = await api.call(method, url, content=body)
                    # 307: Starlette's redirect of a trailing slash (``/epoch/``).
                    if resp.status_code not in (200, 307):
                        error = resp.json()["error"]
                        assert isinstance(error, str) and error.isupper(), resp.text


async def test_a_busy_entity_answers_retry() -> None:
    """Too many changes in flight on the entity: the seed's 409 RETRY, with Retry-After."""
    app = FastAPI()
    router = APIRouter(route_class=broker_routes.BrokerRoute)

    @router.put("/busy")
    async def busy() -> None:
        raise UpdateBusyError("too many concurrent changes", retry_after_s=3)

    app.include_router(router)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
        resp = await http.put("/busy")
    assert resp.status_code == 409 and resp.json() == {"error": "RETRY"}
    assert resp.headers["Retry-After"] == "3"
