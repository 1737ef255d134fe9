"""Durability: a worker SIGKILLed in the middle of an operation; a new worker
finishes it, with exactly one node added or removed and no memcached leaked."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pymemcache.client.base import Client as Memcache
from temporalio.testing import WorkflowEnvironment

from scaleflow.activities.memcached import split_address
from scaleflow.activities.providers.local import LocalProvider
from scaleflow.core.settings import Settings
from tests.e2e.stack import WorkerProcess, memcached_pids, slow_memcached, stack, stack_settings


@pytest.fixture
def workers() -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for w in started:
        w.stop()


def start_worker(settings: Settings, workers: list[WorkerProcess]) -> WorkerProcess:
    w = WorkerProcess(settings)
    w.start()
    workers.append(w)
    return w


def node_pids(settings: Settings) -> set[int]:
    local = LocalProvider(settings)
    return {pid for r in local.records() if (pid := local.running_pid(r)) is not None}


async def test_worker_killed_during_scale_out(
    dev_env: WorkflowEnvironment, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    settings = stack_settings(tmp_path, dev_env.client)
    # The new node takes 4 s to boot (longer than the provider's own 2 s wait), so the
    # kill lands while the operation's readiness step waits on it.
    settings.memcached_bin = slow_memcached(tmp_path, 4)
    async with stack(settings, dev_env.client, worker=False) as st:
        name = st.pool_name()
        first = start_worker(settings, workers)
        await st.put_policy(name, MinCount=1)
        await st.wait_pool(name, 1)
        op = (await st.http.post(f"/v1/scale/out/{name}")).json()["ID"]
        await st.wait_activity(op, "node_ready")
        first.kill()
        start_worker(settings, workers)
        doc = await st.wait_status(op)
        view = await st.wait_pool(name, 2)

        assert len(LocalProvider(settings).records()) == 2
        assert sum("started memcached node" in e["Message"] for e in doc["Events"]) == 1
        # Exactly the pool's two nodes run: nothing was started twice or leaked.
        assert memcached_pids(settings.state_dir) == node_pids(settings)
        assert len(node_pids(settings)) == 2
        for node in view["nodes"]:
            assert Memcache(split_address(node["address"])).version()
        await st.client.get_workflow_handle(f"pool/{name}").terminate("test finished")
    assert memcached_pids(settings.state_dir) == set()


async def test_worker_killed_during_scale_in_drain(
    dev_env: WorkflowEnvironment, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    settings = stack_settings(tmp_path, dev_env.client)
    async with stack(settings, dev_env.client, worker=False) as st:
        name = st.pool_name()
        start_worker(settings, workers)
        await st.put_policy(name, MinCount=1, Selector="newest")
        await st.wait_pool(name, 1)
        await st.wait_status((await st.http.post(f"/v1/scale/out/{name}")).json()["ID"])
        view = await st.wait_pool(name, 2)
        victim = max(view["nodes"], key=lambda n: n["created_at"])
        survivor = next(n for n in view["nodes"] if n["id"] != victim["id"])

        # A client holds the victim, so the drain is still waiting when the worker dies.
        held = Memcache(split_address(victim["address"]))
        held.set("k", "v")
        op = (await st.http.post(f"/v1/scale/in/{name}")).json()["ID"]
        await st.wait_activity(op, "drain_node")
        workers[0].kill()
        start_worker(settings, workers)
        held.close()
        doc = await st.wait_status(op)
        view = await st.wait_pool(name, 1)

        assert [n["id"] for n in view["nodes"]] == [survivor["id"]]
        assert sum("stopped memcached node" in e["Message"] for e in doc["Events"]) == 1
        assert memcached_pids(settings.state_dir) == node_pids(settings)
        assert len(node_pids(settings)) == 1
        assert Memcache(split_address(survivor["address"])).version()
        await st.client.get_workflow_handle(f"pool/{name}").terminate("test finished")
    assert memcached_pids(settings.state_dir) == set()
