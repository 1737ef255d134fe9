"""Bursts of concurrent requests through HTTP: exact answers, no 5xx, bounds held, every
accepted operation succeeds, and the entity's history replays afterwards."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Awaitable
from pathlib import Path

import httpx
from temporalio.testing import WorkflowEnvironment

from tests.bursts import Sampler, assert_replays, burst, no_server_errors
from tests.e2e.stack import Stack, memcached_pids, stack, stack_settings

BURST = 100


async def _size(st: Stack, name: str) -> int | None:
    resp = await st.http.get(f"/v1/pools/{name}")
    return len(resp.json()["nodes"]) if resp.status_code == 200 else None


async def _all_succeed(st: Stack, op_ids: list[str]) -> None:
    docs = await asyncio.gather(*(st.wait_status(op, timeout_s=180) for op in op_ids))
    assert all(d["Status"] == "success" for d in docs)


async def _still_answers(st: Stack, name: str) -> None:
    for path in (f"/v1/pools/{name}", f"/v1/pools/{name}/slots", f"/v1/scale/status?pool={name}"):
        resp = await st.http.get(path)
        assert resp.status_code == 200, (path, resp.text)


async def test_a_burst_each_way_on_one_memcached_pool(
    dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    settings = stack_settings(tmp_path, dev_env.client)
    async with stack(settings, dev_env.client) as st:
        name = st.pool_name()
        low, high = 1, 8
        assert (await st.put_policy(name, MinCount=low, MaxCount=high)).status_code == 200
        await st.wait_pool(name, low)

        sampler = Sampler(lambda: _size(st, name))
        async with sampler.running():
            outs = await burst(BURST, lambda i: st.http.post(f"/v1/scale/out/{name}"))
            no_server_errors(outs)
            codes = Counter(r.status_code for r in outs)
            assert codes == {201: high - low, 412: BURST - (high - low)}, codes
            await _all_succeed(st, [r.json()["ID"] for r in outs if r.status_code == 201])
            await st.wait_pool(name, high)

            ins = await burst(BURST, lambda i: st.http.post(f"/v1/scale/in/{name}"))
            no_server_errors(ins)
            codes = Counter(r.status_code for r in ins)
            assert codes == {201: high - low, 412: BURST - (high - low)}, codes
            await _all_succeed(st, [r.json()["ID"] for r in ins if r.status_code == 201])
            view = await st.wait_pool(name, low)
        sampler.within(low, high)

        await _still_answers(st, name)
        # Exactly the pool's one node is left running.
        assert len(memcached_pids(settings.state_dir)) == len(view["nodes"]) == low
        await assert_replays(st.client, f"pool/{name}", keep_as="pool_burst")


async def test_bursts_over_ten_pools(dev_env: WorkflowEnvironment, tmp_path: Path) -> None:
    """200 requests at once over 10 pools, both directions mixed, on no-op nodes."""
    settings = stack_settings(tmp_path, dev_env.client)
    async with stack(settings, dev_env.client) as st:
        names = [st.pool_name() for _ in range(10)]
        low, high, start = 2, 6, 4
        for name in names:
            resp = await st.put_policy(
                name, MinCount=start, MaxCount=high, Provider="no-op", Engine="none"
            )
            assert resp.status_code == 200, resp.text
        await asyncio.gather(*(st.wait_pool(name, start) for name in names))
        for name in names:
            resp = await st.put_policy(
                name, MinCount=low, MaxCount=high, Provider="no-op", Engine="none"
            )
            assert resp.status_code == 200, resp.text

        # Per pool: 10 scale-outs then 10 scale-ins, all in flight together.
        def way(i: int) -> str:
            return "out" if (i // 10) % 2 == 0 else "in"

        def send(i: int) -> Awaitable[httpx.Response]:
            return st.http.post(f"/v1/scale/{way(i)}/{names[i % 10]}")

        resps = await burst(200, send)
        no_server_errors(resps)
        assert {r.status_code for r in resps} <= {201, 412}
        accepted = [r.json()["ID"] for r in resps if r.status_code == 201]
        await _all_succeed(st, accepted)
        for k, name in enumerate(names):
            won = Counter(
                way(i) for i, r in enumerate(resps) if i % 10 == k and r.status_code == 201
            )
            outs, ins = won["out"], won["in"]
            # Every answer was exact: the end size is what the 201s add up to.
            view = await st.wait_pool(name, start + outs - ins)
            assert low <= len(view["nodes"]) <= high
            # A pool at 4 of [2, 6] can always take at least 2 of each way.
            assert outs >= high - start and ins >= start - low
            await _still_answers(st, name)
        for name in names:
            await assert_replays(st.client, f"pool/{name}")


async def test_a_burst_of_manual_resizes(dev_env: WorkflowEnvironment, tmp_path: Path) -> None:
    """The memcache manager's manual resizes, both ways, on the pool it manages."""
    name = f"mc-{uuid.uuid4().hex[:8]}"
    settings = stack_settings(tmp_path, dev_env.client, default_pool_name=name)
    async with stack(settings, dev_env.client) as st:
        st.pools.append(name)
        low, high = 1, 5
        resp = await st.put_policy(
            name, MinCount=low, MaxCount=high, Provider="no-op", Engine="none"
        )
        assert resp.status_code == 200, resp.text
        await st.wait_pool(name, low)
        sampler = Sampler(lambda: _size(st, name))
        async with sampler.running():
            for change, size in (("increase", high), ("decrease", low)):
                resps = await burst(
                    BURST,
                    lambda i, c=change: st.http.post(
                        "/api/manager/poolsize/manual", json={"change": c}
                    ),
                )
                no_server_errors(resps)
                codes = Counter(r.status_code for r in resps)
                assert codes == {200: high - low, 400: BURST - (high - low)}, codes
                refused = [r.json() for r in resps if r.status_code == 400]
                assert all("Pool size already reached" in b["error"]["message"] for b in refused)
                ids = [r.json()["content"]["ID"] for r in resps if r.status_code == 200]
                await _all_succeed(st, ids)
                await st.wait_pool(name, size)
        sampler.within(low, high)
        await _still_answers(st, name)
        await assert_replays(st.client, f"pool/{name}")
