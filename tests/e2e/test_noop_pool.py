"""A ``no-op`` memcached pool (a dry run: nodes exist only in the logs) resizes end to
end with the real activities: its nodes have no address, so nothing waits for them to
answer and slots change owner without a copy."""

from __future__ import annotations

from pathlib import Path

from temporalio.testing import WorkflowEnvironment

from scaleflow.core.slots import SLOTS
from tests.e2e.stack import stack, stack_settings


def owners(slot_map: dict) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in slot_map["ranges"]:
        out[r["node"]] = out.get(r["node"], 0) + r["end"] - r["start"] + 1
    return out


async def test_a_noop_pool_scales_out_and_in(dev_env: WorkflowEnvironment, tmp_path: Path) -> None:
    settings = stack_settings(tmp_path, dev_env.client, default_pool=False)
    async with stack(settings, dev_env.client) as st:
        name = st.pool_name()
        resp = await st.put_policy(name, MinCount=1, Provider="no-op", Engine="memcached")
        assert resp.status_code == 200, resp.text
        first = (await st.wait_pool(name, 1))["nodes"][0]
        assert first["address"] is None

        resp = await st.http.post(f"/v1/scale/out/{name}")
        doc = await st.wait_status(resp.json()["ID"])
        messages = [e["Message"] for e in doc["Events"]]
        assert any(m.startswith("no-op: added node") for m in messages), messages
        assert not any("migrated slots" in m for m in messages), messages
        view = await st.wait_pool(name, 2)
        slot_map = (await st.http.get(f"/v1/pools/{name}/slots")).json()
        assert owners(slot_map) == {n["id"]: SLOTS // 2 for n in view["nodes"]}

        resp = await st.http.post(f"/v1/scale/in/{name}")
        doc = await st.wait_status(resp.json()["ID"])
        assert any(e["Message"].startswith("no-op: removed node") for e in doc["Events"])
        view = await st.wait_pool(name, 1)
        slot_map = (await st.http.get(f"/v1/pools/{name}/slots")).json()
        assert owners(slot_map) == {view["nodes"][0]["id"]: SLOTS}
