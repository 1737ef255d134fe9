"""The README's three calls, through HTTP, against a dev server, a real worker and
real memcached processes."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from pymemcache.client.base import Client as Memcache
from temporalio.testing import WorkflowEnvironment

from scaleflow.activities.memcached import split_address
from scaleflow.stack import ensure_default_pool
from tests.e2e.stack import slow_memcached, stack, stack_settings


def answers(address: str) -> bool:
    client = Memcache(split_address(address), connect_timeout=0.5, timeout=0.5)
    try:
        return bool(client.version())
    except OSError:
        return False
    finally:
        client.close()


def check_document(doc: dict, direction: str, provider: str = "local") -> None:
    """The seed's event document, field by field."""
    assert set(doc) == {"Events", "Direction", "LastUpdate", "Status", "Provider", "ProviderCfg"}
    events = doc["Events"]
    assert events[0]["Message"] == "scaling activity has started"
    assert events[0]["Source"] == "chemtrail"
    assert events[-1] == {
        "Timestamp": doc["LastUpdate"],
        "Message": "scaling activity has successfully completed",
        "Source": "chemtrail",
    }
    for ev in events:
        assert set(ev) == {"Timestamp", "Message", "Source"}
        # Nanoseconds since the epoch, as the seed's sample.
        assert isinstance(ev["Timestamp"], int) and ev["Timestamp"] > 1_600_000_000 * 10**9
    stamps = [ev["Timestamp"] for ev in events]
    assert stamps == sorted(stamps)
    assert doc["Direction"] == direction
    assert doc["Status"] == "success"
    assert doc["Provider"] == provider
    assert doc["ProviderCfg"] == {}


async def test_scale_out_status_scale_in(dev_env: WorkflowEnvironment, tmp_path: Path) -> None:
    settings = stack_settings(
        tmp_path, dev_env.client, default_pool_name=f"d-{uuid.uuid4().hex[:6]}"
    )
    async with stack(settings, dev_env.client) as st:
        name = settings.default_pool_name
        st.pools.append(name)
        await ensure_default_pool(dev_env.client, settings)
        first = (await st.wait_pool(name, 1))["nodes"][0]
        assert answers(first["address"])

        resp = await st.http.post(f"/v1/scale/out/{name}")
        assert resp.status_code == 201
        op_out = resp.json()["ID"]
        assert list(resp.json()) == ["ID"] and uuid.UUID(op_out)
        doc = await st.wait_status(op_out)
        check_document(doc, "out")
        view = await st.wait_pool(name, 2)
        new = next(n for n in view["nodes"] if n["id"] != first["id"])
        messages = [(e["Source"], e["Message"]) for e in doc["Events"]]
        assert ("local", f"started memcached node {new['id']} at {new['address']}") in [
            (s, m.split(" (pid")[0]) for s, m in messages
        ]
        # Seen answering: by the provider (its own pid listening) or the readiness step.
        assert any(
            (s == "local" and m.endswith("it is listening"))
            or (s == "memcached" and "answers" in m)
            for s, m in messages
        )
        assert answers(new["address"])

        resp = await st.http.post(f"/v1/scale/in/{name}")
        assert resp.status_code == 201
        op_in = resp.json()["ID"]
        doc = await st.wait_status(op_in)
        check_document(doc, "in")
        view = await st.wait_pool(name, 1)
        gone = next(n for n in (first, new) if n["id"] != view["nodes"][0]["id"])
        assert not answers(gone["address"])
        assert any(
            e["Source"] == "local"
            and e["Message"].startswith(f"stopped memcached node {gone['id']}")
            for e in doc["Events"]
        )

        listing = (await st.http.get("/v1/scale/status")).json()
        assert {op_out, op_in} <= set(listing)
        assert listing[op_out] == await st.wait_status(op_out)


async def test_drain_waits_for_client_connections(
    dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    settings = stack_settings(tmp_path, dev_env.client)
    async with stack(settings, dev_env.client) as st:
        name = st.pool_name()
        assert (await st.put_policy(name, MinCount=1, Selector="newest")).status_code == 200
        await st.wait_pool(name, 1)
        await st.wait_status((await st.http.post(f"/v1/scale/out/{name}")).json()["ID"])
        view = await st.wait_pool(name, 2)
        newest = max(view["nodes"], key=lambda n: n["created_at"])
        held = Memcache(split_address(newest["address"]))
        held.set("k", "v")
        try:
            op = (await st.http.post(f"/v1/scale/in/{name}")).json()["ID"]
            doc = await st.wait_status(op, ("in-progress",))
            for _ in range(100):
                doc = (await st.http.get(f"/v1/scale/status/{op}")).json()
                if any("1 client connections open" in e["Message"] for e in doc["Events"]):
                    break
                await asyncio.sleep(0.1)
            assert any(
                e["Message"] == f"draining node {newest['id']}: 1 client connections open"
                for e in doc["Events"]
            ), doc["Events"]
            states = {n["id"]: n["state"] for n in (await st.pool(name))["nodes"]}
            assert states[newest["id"]] == "draining"
            assert doc["Status"] == "in-progress"
        finally:
            held.close()
        doc = await st.wait_status(op)
        said = [e["Message"] for e in doc["Events"]]
        closed = said.index(f"all client connections on node {newest['id']} have closed")
        assert said[closed + 1] == f"drain complete for node {newest['id']}", said
        await st.wait_pool(name, 1)


async def test_cancel_running_scale_out_destroys_its_node(
    dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    settings = stack_settings(tmp_path, dev_env.client)
    settings.memcached_bin = slow_memcached(tmp_path, 3)
    async with stack(settings, dev_env.client) as st:
        name = st.pool_name()
        await st.put_policy(name, MinCount=0)
        op = (await st.http.post(f"/v1/scale/out/{name}")).json()["ID"]
        await st.wait_activity(op, "node_ready")
        resp = await st.http.delete(f"/v1/scale/status/{op}")
        assert resp.status_code == 202, resp.text
        doc = await st.wait_status(op, ("cancelled",))
        assert doc["Events"][-1]["Message"] == "scaling activity has been cancelled"
        assert any(e["Message"].startswith("stopped memcached node") for e in doc["Events"])
        assert list(settings.nodes_dir.glob("*.json")) == []
        assert (await st.pool(name))["nodes"] == []
        again = await st.http.delete(f"/v1/scale/status/{op}")
        assert again.status_code == 409 and "already finished" in again.json()["Error"]


@pytest.mark.parametrize("op_id", ["nope", "00000000-0000-0000-0000-000000000000", "%20"])
async def test_unknown_and_malformed_ids_are_404(
    dev_env: WorkflowEnvironment, tmp_path: Path, op_id: str
) -> None:
    settings = stack_settings(tmp_path, dev_env.client)
    async with stack(settings, dev_env.client, worker=False) as st:
        for method in ("GET", "DELETE"):
            resp = await st.http.request(method, f"/v1/scale/status/{op_id}")
            assert resp.status_code == 404
            assert "no scaling event" in resp.json()["Error"]
