"""A scale-in cancelled in the middle of its migration or of its drain moves the slots
back: both nodes stay ready with an even share each, and no key is lost or stale."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pymemcache.client.base import Client
from temporalio.testing import WorkflowEnvironment

from scaleflow.client import PoolClient
from scaleflow.client.wire import split_address
from scaleflow.core.slots import SLOTS, SlotMap, slot_of
from tests.e2e.slot_helpers import keyset, missing, owned_once, strays, write_all
from tests.e2e.stack import TEST_CLIENT_REFRESH_S, Stack, stack, stack_settings


async def slot_map(st: Stack, name: str) -> SlotMap:
    return SlotMap.model_validate((await st.http.get(f"/v1/pools/{name}/slots")).json())


@contextlib.contextmanager
def held_connections(addresses: list[str]) -> Iterator[None]:
    """A client connection open on every node, so that a drain cannot finish and the
    cancel is sure to land before the node is terminated."""
    clients = [Client(split_address(a), timeout=5) for a in addresses]
    try:
        for c in clients:
            c.version()  # connects
        yield
    finally:
        for c in clients:
            c.close()


async def draining_node(st: Stack, name: str, timeout_s: float = 30) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        view = await st.pool(name)
        draining = [n["id"] for n in view["nodes"] if n["state"] == "draining"]
        if draining:
            return draining[0]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no node of {name} became draining")


async def wait_forgotten(st: Stack, name: str, node: str, timeout_s: float = 30) -> None:
    """Until the API's map no longer names ``node``: clients now write elsewhere."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if node not in (await slot_map(st, name)).addresses:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{node} is still in the slot map of {name}")


def rewrite(api: str, name: str, updates: dict[str, str], deletes: list[str]) -> None:
    client = PoolClient.from_api(api, name, refresh_s=TEST_CLIENT_REFRESH_S)
    try:
        assert client.set_many(updates) == []
        for key in deletes:
            client.delete(key)
    finally:
        client.close()


def found(api: str, name: str, keys: list[str]) -> list[str]:
    client = PoolClient.from_api(api, name, refresh_s=TEST_CLIENT_REFRESH_S)
    try:
        return sorted(client.get_many(keys))
    finally:
        client.close()


@pytest.mark.parametrize("phase", ["migrate_range", "drain_node"])
async def test_cancelled_scale_in_gives_the_node_its_slots_back(
    dev_env: WorkflowEnvironment, tmp_path: Path, phase: str
) -> None:
    settings = stack_settings(tmp_path, dev_env.client)
    async with stack(settings, dev_env.client) as st:
        name = st.pool_name()
        api = str(st.http.base_url)
        await st.put_policy(name, MinCount=1)
        await st.wait_pool(name, 1)
        out = await st.http.post(f"/v1/scale/out/{name}")
        await st.wait_status(out.json()["ID"])
        view = await st.wait_pool(name, 2)
        ids = {n["id"] for n in view["nodes"]}
        before = await slot_map(st, name)
        assert sorted(before.counts().values()) == [SLOTS // 2, SLOTS // 2]
        values = keyset(30_000)
        await asyncio.to_thread(write_all, api, name, values)

        with held_connections([n["address"] for n in view["nodes"]]):
            resp = await st.http.post(f"/v1/scale/in/{name}")
            assert resp.status_code == 201, resp.text
            op = resp.json()["ID"]
            if phase == "migrate_range":
                await st.wait_activity(f"{op}-migration-1", "migrate_range")
                victim = await draining_node(st, name)
                deleted: list[str] = []
            else:
                await st.wait_activity(op, "drain_node")
                victim = await draining_node(st, name)
                await wait_forgotten(st, name, victim)
                # Its keys now live on the other node only: change some and delete some
                # there, which the copy back must not undo with the victim's old copies.
                theirs = [k for k in values if before.owner(slot_of(k)) == victim]
                deleted = theirs[:500]
                updates = {k: f"new-{values[k]}" for k in theirs[500:5000]}
                await asyncio.to_thread(rewrite, api, name, updates, deleted)
                values.update(updates)
                for k in deleted:
                    del values[k]
            assert (await st.http.delete(f"/v1/scale/status/{op}")).status_code == 202
            doc = await st.wait_status(op, ("cancelled",), timeout_s=120)

        view = await st.wait_pool(name, 2)
        assert {n["id"] for n in view["nodes"]} == ids
        assert all(n["state"] == "ready" for n in view["nodes"])
        final = await slot_map(st, name)
        owned_once(final, ids)
        assert set(final.addresses) == ids
        assert sorted(final.counts().values()) == [SLOTS // 2, SLOTS // 2]
        assert final.counts()[victim] == SLOTS // 2
        assert final.epoch > before.epoch

        assert await asyncio.to_thread(missing, api, name, values) == []
        assert await asyncio.to_thread(found, api, name, deleted) == []
        assert await asyncio.to_thread(strays, final) == {n: 0 for n in ids}
        migrated = [e["Message"] for e in doc["Events"] if e["Message"].startswith("migrated")]
        assert len(migrated) >= 2, "slots moved away, then back with their keys"
