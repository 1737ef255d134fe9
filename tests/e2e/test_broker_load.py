"""The broker end to end, through HTTP, with a Redis Cluster client under load all along.

A real stack: the Temporal dev server, the API on a port, a worker in a subprocess, local
proxies (redis-server pairs on 127.0.0.2-5). A separate process runs a stock redis-py
``RedisCluster`` doing SET, GET, DEL and same-slot MSET the whole time. Through the API:
create a cluster of 4 nodes, auto-scale to 8 and back to 4, delete the free nodes,
SIGKILL one proxy's two redis-server processes and let the broker's pings fail it over,
balance. The client saw no exception and no stale read, every key kept its last value and
deleted keys stayed deleted; ``redis-cli --cluster check`` finds every slot covered and
none open; the metadata matches ``CLUSTER SHARDS``; after the cluster and the proxies are
deleted, no redis-server process of the test is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis
from temporalio.testing import WorkflowEnvironment

from scaleflow.activities.redis_proxies import LocalProxies
from scaleflow.api.routes import broker as broker_routes
from scaleflow.core.broker.activity_io import DestroyProxyInput
from scaleflow.core.broker.chunks import master_indexes, stable_ranges
from scaleflow.core.broker.models import BrokerMeta, Role
from scaleflow.workflows.broker import BrokerWorkflow
from scaleflow.workflows.broker.models import ProvisionProxiesRequest, broker_workflow_id
from tests.activities.test_redis_proxies import redis_pids_under, require
from tests.core.broker.helpers import check_meta
from tests.e2e.stack import ROOT, Stack, WorkerProcess, stack, stack_settings

V2 = "/api/v2"
HOSTS = [f"127.0.0.{h}" for h in range(2, 6)]
CLUSTER = "load"
REDIS_CLI = "/usr/bin/redis-cli"
TERMINAL = ("success", "failed", "cancelled")


# ---- the stack ---------------------------------------------------------------------------


@dataclass
class BrokerE2E:
    """The stack and its broker (a name of the test's own), seen through the API."""

    st: Stack
    name: str
    workers: list[WorkerProcess] = field(default_factory=list)

    @property
    def http(self) -> httpx.AsyncClient:
        return self.st.http

    @property
    def state_dir(self) -> Path:
        return self.st.settings.state_dir

    def start_worker(self) -> WorkerProcess:
        env = {"SCALEFLOW_BROKER_NAME": self.name}
        worker = WorkerProcess(self.st.settings, extra_env=env)
        worker.start()
        self.workers.append(worker)
        return worker

    async def provision(self, per_host: int = 2) -> list[str]:
        """Local proxies: no route starts them, so the entity's update is called the way
        the API calls every other one (update-with-start on ``broker/<name>``)."""
        broker = broker_routes.Broker(
            client=self.st.client, settings=self.st.settings, name=self.name
        )
        req = ProvisionProxiesRequest(hosts=HOSTS, per_host=per_host)
        reply = await broker.update(BrokerWorkflow.provision_proxies, req)
        assert reply.operation is not None
        await self.st.wait_status(reply.operation)
        return reply.proxies

    async def change(self, method: str, path: str, **kw: Any) -> str | None:
        """A change through the API; waits for the operation it started, if any."""
        resp = await self.http.request(method, V2 + path, **kw)
        if resp.status_code != 200:
            meta = (await self.http.get(f"{V2}/metadata")).text
            raise AssertionError(f"{method} {path}: {resp.status_code} {resp.text}; {meta}")
        op = resp.headers.get("X-Operation-ID")
        if op is not None:
            await self.st.wait_status(op, timeout_s=120)
        return op

    async def meta(self) -> BrokerMeta:
        resp = await self.http.get(f"{V2}/metadata")
        assert resp.status_code == 200, resp.text
        return BrokerMeta.model_validate(resp.json())

    async def broker_ops(self) -> dict[str, str]:
        """Status of every operation of this broker that ``/v1/scale/status`` lists."""
        resp = await self.http.get("/v1/scale/status")
        assert resp.status_code == 200, resp.text
        return {
            op_id: doc["Status"]
            for op_id, doc in resp.json().items()
            if (doc.get("ProviderCfg") or {}).get("broker") == self.name
        }

    async def settled(self, known: set[str] | None = None, timeout_s: float = 120) -> set[str]:
        """Until no operation of the broker runs, and one not in ``known`` (if given) was
        started; every one that ended succeeded. The ids of them all."""
        ops: dict[str, str] = {}
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ops = await self.broker_ops()
            new = known is None or bool(set(ops) - known)
            if new and all(s in TERMINAL for s in ops.values()):
                failed = {i: s for i, s in ops.items() if s != "success"}
                assert not failed, failed
                return set(ops)
            await asyncio.sleep(0.2)
        raise AssertionError(f"operations still running: {ops}")

    async def remove_everything(self) -> None:
        """Delete the clusters, then every proxy (local ones are destroyed)."""
        for name in list((await self.meta()).clusters):
            await self.change("DELETE", f"/clusters/meta/{name}")
        await self.settled()
        for address in sorted((await self.meta()).all_proxies):
            await self.change("DELETE", f"/proxies/meta/{address}")
        meta = await self.meta()
        assert not meta.clusters and not meta.all_proxies, meta


@contextlib.asynccontextmanager
async def broker_stack(env: WorkflowEnvironment, tmp_path: Path) -> AsyncIterator[BrokerE2E]:
    """API in process, worker in a subprocess; whatever is left is removed afterwards."""
    require("redis-server")
    # A broker of the test's own: the API serves the one its settings name.
    settings = stack_settings(tmp_path, env.client, broker_name=f"e{uuid.uuid4().hex[:8]}")
    name = settings.broker_name
    async with stack(settings, env.client, worker=False) as st:
        b = BrokerE2E(st=st, name=name)
        try:
            b.start_worker()
            yield b
        finally:
            handle = st.client.get_workflow_handle(broker_workflow_id(name))
            with contextlib.suppress(Exception):
                await handle.terminate("test finished")
            for worker in b.workers:
                worker.stop()
            proxies = LocalProxies(settings)
            for rec in proxies.records():
                proxies.destroy(DestroyProxyInput(proxy_id=rec.proxy_id))


# ---- Redis as it is ----------------------------------------------------------------------


def _client(address: str) -> redis.Redis:
    host, _, port = address.rpartition(":")
    return redis.Redis(host=host, port=int(port), decode_responses=True, protocol=3)


def shards(address: str) -> dict[str, tuple[list[tuple[int, int]], set[str]]]:
    """master address -> (slot ranges, replica addresses), from CLUSTER SHARDS on
    ``address``; nodes that failed are left out."""
    r = _client(address)
    try:
        out = {}
        for shard in r.execute_command("CLUSTER", "SHARDS"):
            flat = [int(x) for x in shard["slots"]]
            nodes = [n for n in shard["nodes"] if n["health"] != "fail"]
            master = [f"{n['ip']}:{n['port']}" for n in nodes if n["role"] == "master"]
            if not master:
                continue
            replicas = {f"{n['ip']}:{n['port']}" for n in nodes if n["role"] == "replica"}
            out[master[0]] = (list(zip(flat[::2], flat[1::2], strict=True)), replicas)
        return out
    finally:
        r.close()


def expected_shards(
    meta: BrokerMeta, name: str
) -> dict[str, tuple[list[tuple[int, int]], set[str]]]:
    """The same, as the broker's metadata says it should be."""
    cluster = meta.clusters[name]
    failed = set(meta.failed_proxies)
    out = {}
    for i in master_indexes(cluster):
        node = cluster.nodes[i]
        assert all(s.is_stable for s in node.slots), f"{node.address} still migrates"
        replicas = {p.node_address for p in node.repl.peers if p.proxy_address not in failed}
        out[node.address] = (sorted(stable_ranges(node)), replicas)
    return out


def mismatch(meta: BrokerMeta, name: str) -> str | None:
    """How CLUSTER SHARDS, as every live node of the cluster answers it, differs from the
    metadata (None: it does not)."""
    want = expected_shards(meta, name)
    failed = set(meta.failed_proxies)
    for node in meta.clusters[name].nodes:
        if node.proxy_address in failed:
            continue
        seen = shards(node.address)
        got = {m: (sorted(r), reps) for m, (r, reps) in seen.items() if r or m in want}
        if got != want:
            return f"{node.address} sees {got}, the metadata says {want}"
    return None


async def assert_matches(b: BrokerE2E, name: str, timeout_s: float = 30) -> BrokerMeta:
    """The metadata is consistent, and Redis agrees once gossip has spread the roles."""
    problem: str | None = "never read"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        meta = await b.meta()
        check_meta(meta)
        problem = await asyncio.to_thread(mismatch, meta, name)
        if problem is None:
            return meta
        await asyncio.sleep(0.2)
    raise AssertionError(problem)


def cluster_check(address: str) -> str:
    """``redis-cli --cluster check``, until it finds nothing wrong (nodes agree by gossip,
    so a first look may be early); its last output."""
    out = ""
    for _ in range(50):
        run = subprocess.run(
            [REDIS_CLI, "--cluster", "check", address], capture_output=True, text=True, timeout=30
        )
        out = run.stdout + run.stderr
        if run.returncode == 0 and "[WARNING]" not in out and "[ERR]" not in out:
            return out
        time.sleep(0.2)
    return out


def redis_pids_of(addresses: tuple[str, str]) -> list[int]:
    found = []
    for address in addresses:
        r = _client(address)
        try:
            found.append(int(r.info("server")["process_id"]))
        finally:
            r.close()
    return found


async def wait_for(what: str, check: Callable[[], Awaitable[bool]], timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


# ---- the client under load ---------------------------------------------------------------


@dataclass
class LoadClient:
    """``tests/e2e/broker_load_client.py`` in its own process."""

    dir: Path
    seed: str
    proc: subprocess.Popen[bytes] | None = None

    @property
    def report_path(self) -> Path:
        return self.dir / "report.json"

    async def start(self, timeout_s: float = 60) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        ready = self.dir / "ready"
        args = [
            sys.executable,
            "-m",
            "tests.e2e.broker_load_client",
            "--seed",
            self.seed,
            "--report",
            str(self.report_path),
            "--ready",
            str(ready),
            "--stop",
            str(self.dir / "stop"),
        ]
        self.proc = await asyncio.to_thread(self._spawn, args)
        deadline = time.monotonic() + timeout_s
        while not ready.exists():
            assert self.proc.poll() is None, (self.dir / "client.log").read_text()
            assert time.monotonic() < deadline, "the load client never got ready"
            await asyncio.sleep(0.1)

    def _spawn(self, args: list[str]) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with (self.dir / "client.log").open("wb") as log:
            return subprocess.Popen(args, env=env, stdout=log, stderr=log, cwd=ROOT)

    async def stop(self, timeout_s: float = 120) -> dict[str, Any]:
        assert self.proc is not None
        (self.dir / "stop").write_text("stop\n")
        await asyncio.to_thread(self.proc.wait, timeout_s)
        assert self.proc.returncode == 0, (self.dir / "client.log").read_text()
        report: dict[str, Any] = json.loads(self.report_path.read_text())
        return report

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# ---- the test ------------------------------------------------------------------------------


def owning(meta: BrokerMeta, name: str = CLUSTER) -> list[int]:
    """The masters that own slots."""
    cluster = meta.clusters[name]
    return [i for i in master_indexes(cluster) if stable_ranges(cluster.nodes[i])]


async def test_cluster_life_under_client_load(dev_env: WorkflowEnvironment, tmp_path: Path) -> None:
    async with broker_stack(dev_env, tmp_path) as b:
        assert len(await b.provision()) == 8
        await b.change("POST", f"/clusters/meta/{CLUSTER}", json={"node_number": 4})
        meta = await assert_matches(b, CLUSTER)

        load = LoadClient(tmp_path / "load", meta.clusters[CLUSTER].nodes[0].address)
        try:
            await load.start()

            await b.change("POST", f"/clusters/migrations/auto/{CLUSTER}/8")
            meta = await assert_matches(b, CLUSTER)
            assert len(meta.clusters[CLUSTER].nodes) == 8
            assert len(owning(meta)) == 4

            await b.change("POST", f"/clusters/migrations/auto/{CLUSTER}/4")
            meta = await assert_matches(b, CLUSTER)
            assert len(owning(meta)) == 2
            await b.change("DELETE", f"/clusters/free_nodes/{CLUSTER}")
            meta = await assert_matches(b, CLUSTER)
            assert len(meta.clusters[CLUSTER].nodes) == 4

            # SIGKILL the proxy of the first master: both of its redis-server processes.
            cluster = meta.clusters[CLUSTER]
            victim = cluster.nodes[master_indexes(cluster)[0]].proxy_address
            pids = await asyncio.to_thread(redis_pids_of, meta.all_proxies[victim].node_addresses)
            before = await b.settled()
            for pid in pids:
                os.kill(pid, signal.SIGKILL)

            async def replaced() -> bool:
                m = await b.meta()
                members = {n.proxy_address for n in m.clusters[CLUSTER].nodes}
                return victim in m.failed_proxies and victim not in members

            await wait_for("the failover of the killed proxy", replaced)
            await b.settled(known=before)
            meta = await assert_matches(b, CLUSTER)
            assert len(meta.clusters[CLUSTER].nodes) == 4

            await b.change("PUT", f"/clusters/balance/{CLUSTER}")
            await b.settled()
            meta = await assert_matches(b, CLUSTER)
            # Balanced: every chunk's masters are on their home nodes again (0 and 2).
            assert master_indexes(meta.clusters[CLUSTER]) == [0, 2]
            assert {n.repl.role for n in meta.clusters[CLUSTER].nodes} == set(Role)

            report = await load.stop()
        finally:
            load.kill()

        summary = {k: v for k, v in report.items() if k not in ("errors", "stale", "lost")}
        assert report["errors"] == [], (summary, report["errors"][:5])
        assert report["stale"] == [], (summary, report["stale"][:5])
        assert "verify_error" not in report, summary
        assert report["lost"] == [], (summary, report["lost"][:5])
        assert report["resurrected"] == [], summary
        assert report["unsure"] == 0, summary
        # The client did work through it all, deletes and MSETs included.
        assert report["keys"] > 2000 and report["deleted"] > 0, summary
        assert min(report["ops"].get(op, 0) for op in ("set", "get", "del", "mset")) > 100, summary

        seed = meta.clusters[CLUSTER].nodes[0].address
        out = await asyncio.to_thread(cluster_check, seed)
        assert "[OK] All 16384 slots covered." in out, out
        assert "[WARNING]" not in out and "[ERR]" not in out, out

        await b.remove_everything()
        assert redis_pids_under(b.state_dir) == [], "redis-server processes were left"
