"""Seeded random broker actions through HTTP on real Redis (undermoon's
``chaostest/random_test.py``): create clusters of 0-40 nodes, add nodes then expand or
shrink, scale automatically, delete free nodes, now and then delete a cluster; sometimes
the next request comes while the last one's operation still runs.

Every answer is checked against a small model of what should happen (status, and the
seed's ``{"error": CODE}`` for refusals); no answer may be a 5xx. Between actions, once
the operations started are over (``X-Operation-ID`` → ``/v1/scale/status/<id>``, then
the entity idle), a redis-py ``RedisCluster`` writes keys into each live cluster and
reads back every key written before; deleted keys must stay deleted. Keys are also
read while a migration runs (undermoon #201).

A failure names its seed: ``SCALEFLOW_BROKER_SEED=<seed>`` replays it
(``SCALEFLOW_BROKER_ACTIONS`` sets the number of actions, 200 by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import random
import re
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from redis.cluster import ClusterNode, RedisCluster
from temporalio.client import WorkflowFailureError
from temporalio.testing import WorkflowEnvironment

from scaleflow.activities.redis_proxies import LocalProxies
from scaleflow.core.broker.activity_io import DestroyProxyInput, ProvisionProxyInput
from scaleflow.core.broker.models import BrokerMeta, Role
from scaleflow.workflows.broker import BrokerWorkflow
from scaleflow.workflows.broker.models import broker_workflow_id
from tests.activities.test_redis_proxies import redis_pids_under, require
from tests.e2e.stack import Stack, stack, stack_settings

V2 = "/api/v2"
SEED_ENV = "SCALEFLOW_BROKER_SEED"
ACTIONS_ENV = "SCALEFLOW_BROKER_ACTIONS"
# 12 proxies on 4 hosts: clusters of up to 24 nodes; 40 asks for more than there is.
HOSTS = tuple(f"127.0.0.{h}" for h in range(2, 6))
PER_HOST = 3
NAMES = ("c0", "c1", "c2")
NEW_KEYS = 6  # written into each cluster per check
MAX_KEYS = 90  # per cluster: then values are overwritten instead
BUSY = ("MIGRATION_RUNNING", "NODE_NUMBER_CHANGING")
# An expand onto empty masters takes 15-60 s alone; under a loaded CI, several times that.
IDLE_TIMEOUT_S = 300.0


# ---- the model -----------------------------------------------------------------------------


@dataclass(frozen=True)
class MCluster:
    nodes: int
    # Nodes of the chunks holding slots (undermoon's node_number_with_slots): free
    # chunks are always the last ones (shrink keeps the first, new chunks are appended).
    with_slots: int


@dataclass(frozen=True)
class Expect:
    """What the model says a request answers: 200, or a status and the seed's code."""

    status: int = 200
    code: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200


def refused(code: str) -> Expect:
    status = 404 if code == "CLUSTER_NOT_FOUND" else 400 if code.startswith("INVALID") else 409
    return Expect(status, code)


OK = Expect()


def valid_number(n: int) -> bool:
    return n > 0 and n % 4 == 0


def capacity(free_by_host: dict[str, int]) -> int:
    """Proxies that can be paired across hosts: a host holding more than half of them
    can only pair with the others."""
    total, biggest = sum(free_by_host.values()), max(free_by_host.values(), default=0)
    return total if 2 * biggest <= total else 2 * (total - biggest)


def allocation(need_nodes: int, free_by_host: dict[str, int]) -> Expect:
    need = need_nodes // 2
    if sum(free_by_host.values()) < need:
        return refused("NO_AVAILABLE_RESOURCE")
    if capacity(free_by_host) < need:
        return refused("RESOURCE_NOT_BALANCE")
    return OK


@dataclass
class Model:
    clusters: dict[str, MCluster] = field(default_factory=dict)
    proxies: int = len(HOSTS) * PER_HOST

    @property
    def free(self) -> int:
        return self.proxies - sum(c.nodes // 2 for c in self.clusters.values())

    def create(self, name: str, n: int, free: dict[str, int]) -> Expect:
        if not valid_number(n):
            return refused("INVALID_NODE_NUMBER")
        if name in self.clusters:
            return refused("ALREADY_EXISTED")
        out = allocation(n, free)
        if out.ok:
            self.clusters[name] = MCluster(n, n)
        return out

    def delete(self, name: str) -> Expect:
        if self.clusters.pop(name, None) is None:
            return refused("CLUSTER_NOT_FOUND")
        return OK

    def add(self, name: str, k: int, free: dict[str, int], target: bool = False) -> Expect:
        """PATCH nodes (``k`` more), or PUT nodes (``k`` in all) when ``target``."""
        if not valid_number(k):
            return refused("INVALID_NODE_NUMBER")
        c = self.clusters.get(name)
        if c is None:
            return refused("CLUSTER_NOT_FOUND")
        if target:
            if k <= c.nodes:
                return refused("NODE_NUM_ALREADY_ENOUGH")
            k -= c.nodes
        out = allocation(k, free)
        if out.ok:
            self.clusters[name] = dataclasses.replace(c, nodes=c.nodes + k)
        return out

    def expand(self, name: str) -> Expect:
        c = self.clusters.get(name)
        if c is None:
            return refused("CLUSTER_NOT_FOUND")
        if c.with_slots == c.nodes:
            return refused("FREE_NODE_NOT_FOUND")
        self.clusters[name] = MCluster(c.nodes, c.nodes)
        return OK

    def shrink(self, name: str, n: int) -> Expect:
        if not valid_number(n):
            return refused("INVALID_NODE_NUMBER")
        c = self.clusters.get(name)
        if c is None:
            return refused("CLUSTER_NOT_FOUND")
        if c.with_slots < c.nodes:
            return refused("FREE_NODE_FOUND")
        if n >= c.nodes:
            return refused("INVALID_NODE_NUMBER")
        self.clusters[name] = MCluster(c.nodes, n)
        return OK

    def delete_free(self, name: str) -> Expect:
        c = self.clusters.get(name)
        if c is None:
            return refused("CLUSTER_NOT_FOUND")
        if c.with_slots == c.nodes:
            return refused("FREE_NODE_NOT_FOUND")
        self.clusters[name] = MCluster(c.with_slots, c.with_slots)
        return OK

    def auto(self, name: str, n: int, free: dict[str, int]) -> Expect:
        """Free chunks are dropped first (their proxies may be taken again at once); then
        nodes are added and slots spread, or slots leave the last chunks."""
        if not valid_number(n):
            return refused("INVALID_NODE_NUMBER")
        c = self.clusters.get(name)
        if c is None:
            return refused("CLUSTER_NOT_FOUND")
        kept = c.with_slots
        if n > kept:
            out = allocation(n - kept, free)
            if not out.ok:
                return out
            self.clusters[name] = MCluster(n, n)
        else:
            self.clusters[name] = MCluster(kept, n)
        return OK


# ---- the stack ------------------------------------------------------------------------------


@dataclass
class Run:
    st: Stack
    name: str
    rng: random.Random
    model: Model = field(default_factory=Model)
    keys: dict[str, dict[str, str]] = field(default_factory=dict)
    deleted: dict[str, set[str]] = field(default_factory=dict)
    ops: list[str] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    epoch: int = 0
    counter: int = 0
    steps: int = 0
    # Free proxies whose nodes were seen empty.
    free: set[str] = field(default_factory=set)
    # What each kind of request was answered, for the summary.
    answers: Counter[str] = field(default_factory=Counter)

    @property
    def http(self) -> httpx.AsyncClient:
        return self.st.http

    async def call(
        self, method: str, path: str, expect: Expect | tuple[Expect, ...], **kw: Any
    ) -> Expect:
        """The request; its answer must be one of ``expect``. Returns the one it was."""
        allowed = expect if isinstance(expect, tuple) else (expect,)
        resp = await self.http.request(method, V2 + path, **kw)
        body = kw.get("json")
        self.log.append(f"{method} {path} {body or ''} -> {resp.status_code} {resp.text[:120]}")
        assert resp.status_code < 500, self.log[-1]
        kind = re.sub(r"/(c[0-9]|nope|[0-9]+)\b", "", f"{method} {path}")
        self.answers[f"{kind} {resp.status_code} {resp.text[:40]}"] += 1
        if resp.status_code == 200:
            assert OK in allowed, f"{self.log[-1]}: expected {allowed}"
            assert resp.json() == "", self.log[-1]
            epoch = int(resp.headers["X-Broker-Epoch"])
            assert epoch >= self.epoch, f"the global epoch went back: {self.log[-1]}"
            self.epoch = epoch
            if op := resp.headers.get("X-Operation-ID"):
                self.ops.append(op)
            return OK
        got = Expect(resp.status_code, resp.json().get("error"))
        assert got in allowed, f"{self.log[-1]}: expected {allowed}"
        assert resp.json() == {"error": got.code}, self.log[-1]
        return got

    async def meta(self) -> BrokerMeta:
        resp = await self.http.get(f"{V2}/metadata")
        assert resp.status_code == 200, resp.text
        return BrokerMeta.model_validate(resp.json())

    async def free_by_host(self, also: str | None = None) -> dict[str, int]:
        """Free proxies per host (placement is the broker's; the count is the model's).
        ``also``: that cluster's free chunks count as free too (auto scale drops them
        before it allocates)."""
        meta = await self.meta()
        out: dict[str, int] = {}
        free = [p for p in meta.all_proxies.values() if p.cluster is None]
        assert len(free) == self.model.free, (free, self.model)
        for p in free:
            # A proxy with a failure report pending is not given out (a ping that timed
            # out on a loaded machine): that is the broker's to know, not the model's.
            if p.proxy_address not in meta.failures:
                out[p.host] = out.get(p.host, 0) + 1
        c, m = meta.clusters.get(also or ""), self.model.clusters.get(also or "")
        if c is not None and m is not None:
            for node in c.nodes[m.with_slots :: 2]:
                host = meta.all_proxies[node.proxy_address].host
                out[host] = out.get(host, 0) + 1
        return out

    # ---- waiting -------------------------------------------------------------------

    async def settle(self, cancelled_ok: bool = False) -> None:
        """Until every operation started is over (each a success, or cancelled when a
        delete came after it) and the entity runs none."""
        ops, self.ops = self.ops, []
        for op in ops:
            # Its end, long-polled (building the status document at every poll would
            # cost more CPU than the operation); then the status the API reports.
            try:
                await asyncio.wait_for(
                    self.st.client.get_workflow_handle(op).result(), IDLE_TIMEOUT_S
                )
            except WorkflowFailureError:
                pass
            except TimeoutError:
                resp = await self.http.get(f"/v1/scale/status/{op}")
                raise AssertionError(f"operation {op} still running: {resp.text}") from None
            doc: dict[str, Any] = {}
            for _ in range(100):
                resp = await self.http.get(f"/v1/scale/status/{op}")
                doc = resp.json() if resp.status_code == 200 else {}
                if doc.get("Status") in ("success", "failed", "cancelled"):
                    break
                await asyncio.sleep(0.1)  # visibility may list it a little late
            ended = ("success", "cancelled") if cancelled_ok else ("success",)
            assert doc.get("Status") in ended, f"operation {op}: {doc}"
        handle = self.st.client.get_workflow_handle(broker_workflow_id(self.name))
        deadline = time.monotonic() + IDLE_TIMEOUT_S
        while time.monotonic() < deadline:
            if not await handle.query(BrokerWorkflow.operations):
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"operations still running: {await handle.query('operations')}")

    # ---- checks -------------------------------------------------------------------------

    async def check_meta(self) -> BrokerMeta:
        meta = await self.meta()
        assert sorted(meta.clusters) == sorted(self.model.clusters), (meta.clusters, self.model)
        for name, m in self.model.clusters.items():
            resp = await self.http.get(f"{V2}/clusters/info/{name}")
            assert resp.json() == {
                "name": name,
                "node_number": m.nodes,
                "node_number_with_slots": m.with_slots,
                "is_migrating": False,
            }, (resp.text, m)
            cluster = meta.clusters[name]
            for base in range(0, len(cluster.nodes), 4):
                first, second = cluster.nodes[base].proxy_address, cluster.nodes[base + 2]
                hosts = {meta.all_proxies[first].host, meta.all_proxies[second.proxy_address].host}
                assert len(hosts) == 2, f"chunk {base // 4} of {name} on one host: {hosts}"
        return meta

    async def check_keys(self, meta: BrokerMeta, names: list[str] | None = None) -> None:
        for name in names if names is not None else sorted(self.model.clusters):
            cluster = meta.clusters[name]
            masters = [n.address for n in cluster.nodes if n.repl.role is Role.MASTER]
            await asyncio.to_thread(self._check_keys, name, masters)

    def _check_keys(self, name: str, seeds: list[str]) -> None:
        """Write, delete, and read back every key of ``name`` through a new client (an
        old one may still know nodes that have since gone to another cluster).
        Pipelines send a node's commands at once; the client follows MOVED and ASK."""
        rc = cluster_client(seeds)
        try:
            keys = self.keys.setdefault(name, {})
            deleted = self.deleted.setdefault(name, set())
            writes = {}
            for _ in range(NEW_KEYS):
                self.counter += 1
                fresh = len(keys) + len(writes) < MAX_KEYS
                key = f"{name}:{self.counter}" if fresh else self.rng.choice(sorted(keys))
                writes[key] = f"v{self.counter}"
            pipe = rc.pipeline()
            for key, value in writes.items():
                pipe.set(key, value)
            assert all(pipe.execute()), writes
            keys.update(writes)
            deleted -= set(writes)
            if self.rng.random() < 0.5:
                gone = self.rng.choice(sorted(keys))
                assert rc.delete(gone) == 1, gone
                del keys[gone]
                deleted.add(gone)
            expected = {**keys, **dict.fromkeys(sorted(deleted))}
            pipe = rc.pipeline()
            for key in expected:
                pipe.get(key)
            got = dict(zip(expected, pipe.execute(), strict=True))
            wrong = {k: (v, expected[k]) for k, v in got.items() if v != expected[k]}
            assert not wrong, f"{name}: keys (got, expected) {wrong}"
        finally:
            rc.close()

    async def check_empty(self, meta: BrokerMeta) -> None:
        """Nodes of free proxies hold no key (they were reset when they left a cluster),
        nor do the masters of a new cluster."""
        # A free proxy gets no key while it stays free: only newly free ones are read.
        now_free = {p.proxy_address for p in meta.all_proxies.values() if p.cluster is None}
        free = [a for p in sorted(now_free - self.free) for a in meta.all_proxies[p].node_addresses]
        self.free = now_free
        fresh = [
            n.address
            for name in self.model.clusters
            if name not in self.keys
            for n in meta.clusters[name].nodes
        ]
        sizes = await asyncio.to_thread(lambda: {a: dbsize(a) for a in free + fresh})
        assert not any(sizes.values()), f"keys left on reset nodes: {sizes}"

    async def checked(self, keys: bool = True) -> None:
        await self.settle()
        meta = await self.check_meta()
        await self.check_empty(meta)
        if keys:
            await self.check_keys(meta)

    def forget(self, name: str) -> None:
        self.keys.pop(name, None)
        self.deleted.pop(name, None)


def cluster_client(seeds: list[str]) -> RedisCluster:
    nodes = [ClusterNode(a.rsplit(":", 1)[0], int(a.rsplit(":", 1)[1])) for a in seeds]
    return RedisCluster(startup_nodes=nodes, decode_responses=True, socket_timeout=10)


def dbsize(address: str) -> int:
    host, port = address.rsplit(":", 1)
    r = redis.Redis(host=host, port=int(port), socket_timeout=5)
    try:
        return int(r.dbsize())
    finally:
        r.close()


# ---- actions --------------------------------------------------------------------------------


def some_number(rng: random.Random, top: int = 40) -> int:
    """0-``top``, a multiple of 4 two times in three."""
    if rng.random() < 2 / 3:
        return 4 * rng.randint(1, top // 4)
    return rng.randint(0, top)


async def create(run: Run, name: str) -> Expect:
    n = some_number(run.rng)
    expect = run.model.create(name, n, await run.free_by_host())
    if expect.ok:
        run.forget(name)  # a new cluster of an old name: nothing of the old one's
    got = await run.call("POST", f"/clusters/meta/{name}", expect, json={"node_number": n})
    if got.ok and run.rng.random() < 0.5:
        # More moves at once (a shrink has a source per chunk that goes): a config
        # change is metadata only, taken while the cluster forms.
        body = {"migration_limit": run.rng.choice((1, 2, 4, 8))}
        await run.call("PATCH", f"/clusters/config/{name}", OK, json=body)
    return got


async def add_then_scale(run: Run, name: str) -> Expect:
    """Add nodes, wait, then expand (or, now and then, shrink instead)."""
    k = some_number(run.rng, 16)
    if run.rng.random() < 0.5:
        expect = run.model.add(name, k, await run.free_by_host())
        await run.call("PATCH", f"/clusters/nodes/{name}", expect, json={"node_number": k})
    else:
        c = run.model.clusters.get(name)
        k = k if c is None or run.rng.random() < 0.3 else c.nodes + k
        expect = run.model.add(name, k, await run.free_by_host(), target=True)
        body = {"cluster_node_number": k}
        await run.call("PUT", f"/clusters/nodes/{name}", expect, json=body)
    await run.checked()
    if run.rng.random() < 0.7:
        return await run.call("POST", f"/clusters/migrations/expand/{name}", run.model.expand(name))
    return await shrink(run, name)


async def shrink(run: Run, name: str) -> Expect:
    c = run.model.clusters.get(name)
    n = some_number(run.rng, max(4, c.nodes) if c else 16)
    path = f"/clusters/migrations/shrink/{name}/{n}"
    return await run.call("POST", path, run.model.shrink(name, n))


async def auto(run: Run, name: str) -> Expect:
    c = run.model.clusters.get(name)
    n = some_number(run.rng, 4 + (c.nodes if c else 16))
    expect = run.model.auto(name, n, await run.free_by_host(also=name))
    return await run.call("POST", f"/clusters/migrations/auto/{name}/{n}", expect)


async def expand(run: Run, name: str) -> Expect:
    return await run.call("POST", f"/clusters/migrations/expand/{name}", run.model.expand(name))


async def delete_free(run: Run, name: str) -> Expect:
    expect = run.model.delete_free(name)
    return await run.call("DELETE", f"/clusters/free_nodes/{name}", expect)


async def delete(run: Run, name: str) -> Expect:
    got = await run.call("DELETE", f"/clusters/meta/{name}", run.model.delete(name))
    run.forget(name)
    return got


# Migrations take most of the time (seconds each): the mix keeps them to a few dozen.
ACTIONS = (
    (create, 5),
    (add_then_scale, 3),
    (auto, 2),
    (shrink, 2),
    (delete_free, 2),
    (expand, 1),
    (delete, 2),
)


async def busy_follow_up(run: Run, name: str) -> None:
    """A scaling request right after one was accepted, its operation likely still
    running: refused as busy, or (if the operation was quick) answered as when idle."""
    before = dataclasses.replace(run.model, clusters=dict(run.model.clusters))
    kind = run.rng.choice(("delete_free", "expand", "shrink"))
    if kind == "delete_free":
        idle, path, method = run.model.delete_free(name), f"/clusters/free_nodes/{name}", "DELETE"
    elif kind == "expand":
        idle, path, method = run.model.expand(name), f"/clusters/migrations/expand/{name}", "POST"
    else:
        n = 4 * run.rng.randint(1, 4)
        idle, method = run.model.shrink(name, n), "POST"
        path = f"/clusters/migrations/shrink/{name}/{n}"
    got = await run.call(method, path, (idle, *(refused(c) for c in BUSY)))
    if got != idle or not idle.ok:
        run.model = before  # refused: nothing changed


async def step(run: Run) -> None:
    rng = run.rng
    name = rng.choice(NAMES) if rng.random() < 0.95 else "nope"
    action = rng.choices([a for a, _ in ACTIONS], weights=[w for _, w in ACTIONS])[0]
    got = await action(run, name)
    run.steps += 1
    if not got.ok:
        # A refusal changes nothing: the keys are read every few steps only (they take
        # a client per cluster), the metadata every time.
        await run.checked(keys=run.steps % 4 == 0)
        return
    if action is delete or name not in run.model.clusters:
        await run.checked()
        return
    follow = rng.random()
    if follow < 0.15:
        # Deleted while its operation runs: that operation may end cancelled.
        await delete(run, name)
        await run.settle(cancelled_ok=True)
        await run.checked()
        return
    if follow < 0.45 and action is not create:
        # Keys read and written during the migration (or node change) just started; a
        # new cluster is not formed yet when its create is answered.
        await run.check_keys(await run.meta(), [name])
    if follow < 0.7:
        await busy_follow_up(run, name)
    await run.checked()


# ---- the test -------------------------------------------------------------------------------


@pytest.fixture
async def run(dev_env: WorkflowEnvironment, tmp_path: Path) -> AsyncIterator[Run]:
    require("redis-server")
    seed = int(os.environ.get(SEED_ENV) or random.SystemRandom().randrange(2**32))
    print(f"broker random test: {SEED_ENV}={seed}")
    name = f"rnd{uuid.uuid4().hex[:8]}"
    settings = stack_settings(tmp_path, dev_env.client, broker_name=name)
    proxies = LocalProxies(settings)
    try:
        async with stack(settings, dev_env.client) as st:
            r = Run(st=st, name=name, rng=random.Random(seed))
            r.log.append(f"seed {seed}")
            try:
                # Proxies fail over only when this test says so: never here.
                body = {"replica_addresses": [], "auto_failover": False}
                await r.call("PUT", "/config", OK, json=body)
                await register_proxies(r, proxies)
                yield r
            finally:
                handle = st.client.get_workflow_handle(broker_workflow_id(name))
                with contextlib.suppress(Exception):
                    await handle.terminate("test finished")
    finally:
        for rec in proxies.records():
            proxies.destroy(DestroyProxyInput(proxy_id=rec.proxy_id))
        assert not redis_pids_under(settings.state_dir), "redis-server processes were left"


async def register_proxies(run: Run, proxies: LocalProxies) -> None:
    """Proxies started by the test (redis-server pairs), registered through the API."""
    inputs = [
        ProvisionProxyInput(proxy_id=f"t{i}-{h}", host=host)
        for i in range(PER_HOST)
        for h, host in enumerate(HOSTS)
    ]
    made = await asyncio.gather(*(asyncio.to_thread(proxies.provision, p) for p in inputs))
    for result in made:
        info = result.proxy
        body = {"proxy_address": info.proxy_address, "nodes": list(info.node_addresses)}
        await run.call("POST", "/proxies/meta", OK, json=body)


@contextlib.contextmanager
def seed_in_failure(run: Run) -> Iterator[None]:
    try:
        yield
    except BaseException as exc:
        tail = "\n".join(run.log[-15:])
        raise AssertionError(
            f"{exc!r}\nreplay with {SEED_ENV}={run.log[0].split()[-1]}; last requests:\n{tail}"
        ) from exc


# 200 actions with real slot moves: 3-4 minutes on a loaded 2-core machine.
@pytest.mark.timeout(600)
async def test_random_broker_actions_keep_every_key(run: Run) -> None:
    actions = int(os.environ.get(ACTIONS_ENV) or 200)
    with seed_in_failure(run):
        for _ in range(actions):
            await step(run)
        # The end: every cluster deleted, every proxy free and reset.
        for name in sorted(run.model.clusters):
            await delete(run, name)
        await run.checked()
        meta = await run.meta()
        print("answers:", dict(sorted(run.answers.items())))
        assert not meta.clusters and all(p.cluster is None for p in meta.all_proxies.values())
