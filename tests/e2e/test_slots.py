"""Slot-partitioned memcached pools end to end: resizes and a roll-out under a
steady reader lose no key; crash and cancel leave the map consistent."""

from __future__ import annotations

import asyncio
from pathlib import Path

from temporalio.testing import WorkflowEnvironment

from scaleflow.core.slots import SlotMap
from tests.e2e.slot_helpers import Reader, keyset, missing, owned_once, strays, write_all
from tests.e2e.stack import Stack, stack, stack_settings


async def slot_map(st: Stack, name: str) -> SlotMap:
    return SlotMap.model_validate((await st.http.get(f"/v1/pools/{name}/slots")).json())


async def run_op(st: Stack, method: str, path: str, **kw: object) -> dict:
    resp = await st.http.request(method, path, **kw)
    assert resp.status_code == 201, resp.text
    return await st.wait_status(resp.json()["ID"], timeout_s=180)


async def test_no_key_lost_through_resizes_and_a_rollout(
    dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    settings = stack_settings(tmp_path, dev_env.client)
    async with stack(settings, dev_env.client) as st:
        name = st.pool_name()
        api = str(st.http.base_url)
        await st.put_policy(name, MinCount=1)
        await st.wait_pool(name, 1)
        values = keyset(100_000)
        await asyncio.to_thread(write_all, api, name, values)

        with Reader(api, name, values) as reader:
            out1 = await run_op(st, "POST", f"/v1/scale/out/{name}")
            out2 = await run_op(st, "POST", f"/v1/scale/out/{name}")
            await st.wait_pool(name, 3)
            back = await run_op(st, "POST", f"/v1/scale/in/{name}")
            await st.wait_pool(name, 2)
            roll = await run_op(
                st, "PUT", f"/v1/pools/{name}/cache-config", json={"capacity_mb": 96}
            )
        assert reader.errors == []
        assert reader.reads > 1000
        assert reader.misses == [], f"{len(reader.misses)} misses, e.g. {reader.misses[:5]}"

        assert await asyncio.to_thread(missing, api, name, values) == []
        view = await st.wait_pool(name, 2)
        final = await slot_map(st, name)
        owned_once(final, {n["id"] for n in view["nodes"]})
        assert set(final.addresses) == {n["id"] for n in view["nodes"]}
        assert await asyncio.to_thread(strays, final) == {n: 0 for n in final.addresses}
        assert (await st.pool(name))["config"]["capacity_mb"] == 96

        migrated = [e["Message"] for e in out1["Events"] if e["Message"].startswith("migrated")]
        assert migrated and "keys to node" in migrated[0]
        assert sum(int(m.split(": ")[1].split(" ")[0].replace(",", "")) for m in migrated) > 40_000
        assert any(e["Message"].startswith("migrated slots") for e in out2["Events"])
        assert any(e["Message"].startswith("migrated slots") for e in back["Events"])
        assert roll["Direction"] == "rollout"
        assert sum(e["Message"].startswith("stopped memcached node") for e in roll["Events"]) == 2


async def test_cancelled_scale_out_moves_slots_back(
    dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    settings = stack_settings(tmp_path, dev_env.client)
    async with stack(settings, dev_env.client) as st:
        name = st.pool_name()
        api = str(st.http.base_url)
        await st.put_policy(name, MinCount=1)
        first = (await st.wait_pool(name, 1))["nodes"][0]
        values = keyset(30_000)
        await asyncio.to_thread(write_all, api, name, values)
        resp = await st.http.post(f"/v1/scale/out/{name}")
        op = resp.json()["ID"]
        await st.wait_activity(f"{op}-migration-1", "migrate_range")
        assert (await st.http.delete(f"/v1/scale/status/{op}")).status_code == 202
        doc = await st.wait_status(op, ("cancelled",), timeout_s=120)
        view = await st.wait_pool(name, 1)
        assert [n["id"] for n in view["nodes"]] == [first["id"]]
        final = await slot_map(st, name)
        owned_once(final, {first["id"]})
        assert await asyncio.to_thread(missing, api, name, values) == []
        assert any(e["Message"].startswith("stopped memcached node") for e in doc["Events"])
