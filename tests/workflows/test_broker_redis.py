"""The broker's workflows with the real activities: local proxies (redis-server pairs on
127.0.0.2-5) and a Redis Cluster that a stock redis-py ``RedisCluster`` uses throughout.

Create 4 nodes, auto-scale to 8 and back to 4, drop the free nodes, SIGKILL a proxy and let
failure detection fail it over, balance, delete: the keys written keep their values, the
metadata matches ``CLUSTER SHARDS``, and no redis-server process is left behind."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from scaleflow.activities.redis_cluster import RedisClusterActivities
from scaleflow.activities.redis_proxies import LocalProxies, RedisProxyActivities
from scaleflow.core.broker.activity_io import DestroyProxyInput
from scaleflow.core.broker.chunks import master_indexes, stable_ranges
from scaleflow.core.broker.models import BrokerMeta, Role
from scaleflow.core.settings import Settings
from scaleflow.worker import WORKFLOWS
from scaleflow.workflows.broker import BrokerWorkflow
from scaleflow.workflows.broker.models import (
    BrokerInit,
    ClusterRequest,
    CreateClusterRequest,
    MigrateMode,
    MigrateRequest,
    ProvisionProxiesRequest,
)
from tests.activities.test_redis_proxies import redis_pids_under, require
from tests.core.broker.helpers import check_meta
from tests.workflows.test_broker import Broker, replay_all, retire, start_broker, wait_for
from tests.workflows.test_broker_fakes import FakeRedis

HOSTS = [f"127.0.0.{h}" for h in range(2, 6)]


@pytest.fixture
async def real(time_env: WorkflowEnvironment, tmp_path: Path) -> AsyncIterator[Broker]:
    require("redis-server")
    settings = Settings(state_dir=tmp_path / "state")
    proxies = LocalProxies(settings)
    cluster = RedisClusterActivities(settings)
    local = RedisProxyActivities(settings, proxies)
    acts = [
        cluster.form_redis_cluster,
        cluster.migrate_redis_slots,
        cluster.failover_redis_node,
        cluster.remove_redis_nodes,
        cluster.ping_redis_nodes,
        local.provision_redis_proxy,
        local.destroy_redis_proxy,
    ]
    queue = f"q-{uuid.uuid4()}"
    client = time_env.client
    try:
        async with Worker(
            client,
            task_queue=queue,
            workflows=WORKFLOWS,
            activities=acts,
            activity_executor=ThreadPoolExecutor(max_workers=16),
        ):
            init = BrokerInit(name=f"r{uuid.uuid4().hex[:8]}")
            # FakeRedis is only the Broker helper's shape here: checks use real nodes.
            b = await start_broker(client, queue, FakeRedis(), init)
            try:
                yield b
                await replay_all(client, b.handle)
            finally:
                await retire(client, b.handle)
    finally:
        for rec in proxies.records():
            proxies.destroy(DestroyProxyInput(proxy_id=rec.proxy_id))
        assert not redis_pids_under(settings.state_dir), "redis-server processes were left"


def shards(address: str) -> dict[str, tuple[str, list[tuple[int, int]]]]:
    """master address -> (role, slot ranges) from CLUSTER SHARDS on ``address``."""
    host, port = address.rsplit(":", 1)
    r = redis.Redis(host=host, port=int(port), decode_responses=True, protocol=3)
    out = {}
    try:
        for shard in r.execute_command("CLUSTER", "SHARDS"):
            flat = [int(x) for x in shard["slots"]]
            for node in shard["nodes"]:
                ranges = list(zip(flat[::2], flat[1::2], strict=True))
                role = node["role"]
                key = f"{node['ip']}:{node['port']}"
                out[key] = (role, ranges if role == "master" else [])
    finally:
        r.close()
    return out


async def assert_matches(meta: BrokerMeta, name: str) -> None:
    """The metadata matches CLUSTER SHARDS, once the nodes' views have converged (a node
    learns of another's new role by gossip)."""
    for _ in range(100):
        try:
            await asyncio.to_thread(_matches, meta, name)
            return
        except AssertionError:
            await asyncio.sleep(0.1)
    _matches(meta, name)


def _matches(meta: BrokerMeta, name: str) -> None:
    cluster = meta.clusters[name]
    failed = set(meta.failed_proxies)
    seed = next(n.address for n in cluster.nodes if n.proxy_address not in failed)
    seen = shards(seed)
    masters = set(master_indexes(cluster))
    for i, node in enumerate(cluster.nodes):
        if node.proxy_address in failed:
            continue
        assert node.address in seen, (node.address, seen)
        role, ranges = seen[node.address]
        assert role == (Role.MASTER if i in masters else Role.REPLICA).value, node.address
        if i in masters:
            assert sorted(ranges) == stable_ranges(node), node.address


async def settled(b: Broker) -> BrokerMeta:
    async def idle() -> bool:
        return not await b.handle.query(BrokerWorkflow.operations)

    try:
        await wait_for("the operations to end", idle, tries=2400)
    except AssertionError:
        for op in await b.handle.query(BrokerWorkflow.operations):
            desc = await b.client.get_workflow_handle(op.id).fetch_history()
            print("STUCK", op, desc.events[0].workflow_execution_started_event_attributes.input)
        print("META", await b.meta())
        raise
    meta = await b.meta()
    check_meta(meta)
    return meta


def client_for(meta: BrokerMeta, name: str) -> RedisCluster:
    node = meta.clusters[name].nodes[0].address.rsplit(":", 1)
    return RedisCluster(host=node[0], port=int(node[1]), decode_responses=True)


def lost_keys(meta: BrokerMeta, name: str, keys: dict[str, str]) -> list[str]:
    """The keys a new client (from a live node) does not read back with their values: says
    which step lost them, where the long-lived client only can tell at the end."""
    failed = set(meta.failed_proxies)
    seed = next(n.address for n in meta.clusters[name].nodes if n.proxy_address not in failed)
    host, port = seed.rsplit(":", 1)
    client = RedisCluster(host=host, port=int(port), decode_responses=True)
    try:
        return [k for k, v in keys.items() if client.get(k) != v]
    finally:
        client.close()


async def test_a_real_cluster_through_its_whole_life(real: Broker) -> None:
    b = real
    req = ProvisionProxiesRequest(hosts=HOSTS, per_host=2)
    assert len((await b.update(BrokerWorkflow.provision_proxies, req)).proxies) == 8
    await b.update(BrokerWorkflow.create_cluster, CreateClusterRequest(name="c", node_number=4))
    meta = await settled(b)
    await assert_matches(meta, "c")

    rc = await asyncio.to_thread(client_for, meta, "c")
    keys = {f"k{i}": f"v{i}" for i in range(2000)}
    try:
        await asyncio.to_thread(lambda: [rc.set(k, v) for k, v in keys.items()])
        auto = MigrateRequest(name="c", mode=MigrateMode.AUTO, node_number=8)
        await b.update(BrokerWorkflow.migrate, auto)
        meta = await settled(b)
        assert len(meta.clusters["c"].nodes) == 8
        await assert_matches(meta, "c")
        auto = MigrateRequest(name="c", mode=MigrateMode.AUTO, node_number=4)
        await b.update(BrokerWorkflow.migrate, auto)
        meta = await settled(b)
        await assert_matches(meta, "c")
        await b.update(BrokerWorkflow.delete_free_nodes, ClusterRequest(name="c"))
        meta = await settled(b)
        assert len(meta.clusters["c"].nodes) == 4
        await assert_matches(meta, "c")
        lost = await asyncio.to_thread(lost_keys, meta, "c", keys)
        assert not lost, f"{len(lost)} keys lost by the migrations, e.g. {lost[:3]}"

        # SIGKILL the first master's proxy: failure detection fails it over.
        victim = meta.clusters["c"].nodes[master_indexes(meta.clusters["c"])[0]].proxy_address
        local = meta.all_proxies[victim]
        info = (await b.handle.query(BrokerWorkflow.meta)).all_proxies[victim]
        pids = [p for p in redis_pids_of(info.node_addresses)]
        assert len(pids) == 2
        for pid in pids:
            os.kill(pid, signal.SIGKILL)

        async def replaced() -> bool:
            m = await b.meta()
            return victim in m.failed_proxies and m.all_proxies[victim].cluster is None

        await wait_for("the failover", replaced, tries=2400)
        meta = await settled(b)
        await assert_matches(meta, "c")
        lost = await asyncio.to_thread(lost_keys, meta, "c", keys)
        assert not lost, f"{len(lost)} keys lost by the failover, e.g. {lost[:3]}"
        await b.update(BrokerWorkflow.balance, ClusterRequest(name="c"))
        meta = await settled(b)
        await assert_matches(meta, "c")
        lost = await asyncio.to_thread(lost_keys, meta, "c", keys)
        assert not lost, f"{len(lost)} keys lost by the balance, e.g. {lost[:3]}"
        # The client that knew the dead master from the start finds every key too.
        got = await asyncio.to_thread(lambda: {k: rc.get(k) for k in keys})
        assert got == keys
        assert local.host in HOSTS
    finally:
        with contextlib.suppress(Exception):
            rc.close()
    deleted = await b.update(BrokerWorkflow.delete_cluster, ClusterRequest(name="c"))
    assert await reset_soon(b, deleted.operation or ""), "the cluster's nodes were not reset"
    meta = await settled(b)
    assert not meta.clusters


async def reset_soon(b: Broker, op_id: str) -> bool:
    """Whether the delete's reset succeeded, seen within a few seconds."""
    for _ in range(100):
        history = await b.client.get_workflow_handle(op_id).fetch_history()
        for ev in history.events:
            if ev.HasField("activity_task_completed_event_attributes"):
                return True
            if ev.HasField("activity_task_failed_event_attributes"):
                return False
        await asyncio.sleep(0.1)
    return False


def redis_pids_of(addresses: tuple[str, str]) -> list[int]:
    """The pids of the redis-server processes listening on ``addresses``."""
    found = []
    for address in addresses:
        host, port = address.rsplit(":", 1)
        r = redis.Redis(host=host, port=int(port))
        try:
            found.append(int(r.info("server")["process_id"]))
        finally:
            r.close()
    return found
