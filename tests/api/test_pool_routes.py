"""The pool routes of issue 3: slots (with ETag) and cache-config roll-outs."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from scaleflow.core.slots import SLOTS, SlotMap
from tests.e2e.stack import Stack, stack, stack_settings


@pytest.fixture
async def st(dev_env: WorkflowEnvironment, tmp_path: Path) -> AsyncIterator[Stack]:
    settings = stack_settings(tmp_path, dev_env.client)
    async with stack(settings, dev_env.client) as s:
        yield s


async def test_slots_endpoint_and_etag(st: Stack) -> None:
    name = st.pool_name()
    await st.put_policy(name, MinCount=1)
    view = await st.wait_pool(name, 1)
    resp = await st.http.get(f"/v1/pools/{name}/slots")
    assert resp.status_code == 200
    m = SlotMap.model_validate(resp.json())
    node = view["nodes"][0]
    assert [(r.start, r.end, r.node) for r in m.ranges] == [(0, SLOTS - 1, node["id"])]
    assert m.addresses == {node["id"]: node["address"]}
    etag = resp.headers["ETag"]
    assert etag == f'"{m.epoch}"'
    same = await st.http.get(f"/v1/pools/{name}/slots", headers={"If-None-Match": etag})
    assert same.status_code == 304
    stale = await st.http.get(f"/v1/pools/{name}/slots", headers={"If-None-Match": '"0"'})
    assert stale.status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"capacity_mb": 0}, 400, "capacity_mb"),
        ({"capacity_mb": "big"}, 400, "capacity_mb"),
        ({}, 400, "capacity_mb"),
        ({"capacity_mb": 64, "eviction": "rr"}, 400, "memcached evicts only by (segmented) LRU"),
        ({"capacity_mb": 64, "eviction": "random"}, 400, "'lru' or 'none'"),
    ],
)
async def test_bad_cache_config(st: Stack, body: dict, status: int, fragment: str) -> None:
    name = st.pool_name()
    await st.put_policy(name, MinCount=0)
    resp = await st.http.put(f"/v1/pools/{name}/cache-config", json=body)
    assert resp.status_code == status, resp.text
    assert fragment in resp.json()["Error"]


async def test_cache_config_on_unknown_or_non_local_pool(st: Stack) -> None:
    resp = await st.http.put("/v1/pools/nope/cache-config", json={"capacity_mb": 64})
    assert resp.status_code == 404 and "no pool" in resp.json()["Error"]
    resp = await st.http.get("/v1/pools/nope/slots")
    assert resp.status_code == 404
    name = st.pool_name()
    await st.put_policy(name, MinCount=0, Provider="no-op")
    resp = await st.http.put(f"/v1/pools/{name}/cache-config", json={"capacity_mb": 64})
    assert resp.status_code == 409
    assert "local memcached pools only" in resp.json()["Error"]


async def test_a_new_pool_waits_for_clients_as_the_deployment_says(
    dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    """SCALEFLOW_CLIENT_REFRESH_S is what a new pool gets; a later policy keeps the pool's."""
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    settings = stack_settings(tmp_path, dev_env.client, client_refresh_s=0.3)
    async with stack(settings, dev_env.client) as st:
        assert (await st.put_policy(name, MinCount=0)).status_code == 200
        assert (await st.pool(name))["config"]["client_refresh_s"] == 0.3
    later = stack_settings(
        tmp_path, dev_env.client, task_queue=settings.task_queue, client_refresh_s=0.1
    )
    async with stack(later, dev_env.client) as st:
        st.pools.append(name)
        assert (await st.put_policy(name, MinCount=0, MaxCount=4)).status_code == 200
        config = (await st.pool(name))["config"]
        assert config["max_count"] == 4 and config["client_refresh_s"] == 0.3
