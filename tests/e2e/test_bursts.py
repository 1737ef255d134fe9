"""Bursts of concurrent requests through HTTP: exact answers, no 5xx, bounds held, every
accepted operation succeeds, and the entity's history replays afterwards."""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path

from temporalio.testing import WorkflowEnvironment

from tests.bursts import (
    Sampler,
    all_succeed,
    assert_replays,
    burst,
    no_server_errors,
    pool_size,
    still_answers,
)
from tests.e2e.stack import memcached_pids, stack, stack_settings

BURST = 100


async def test_a_burst_each_way_on_one_memcached_pool(
    dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    settings = stack_settings(tmp_path, dev_env.client)
    async with stack(settings, dev_env.client) as st:
        name = st.pool_name()
        low, high = 1, 8
        assert (await st.put_policy(name, MinCount=low, MaxCount=high)).status_code == 200
        await st.wait_pool(name, low)

        sampler = Sampler(lambda: pool_size(st, name))
        async with sampler.running():
            outs = await burst(BURST, lambda i: st.http.post(f"/v1/scale/out/{name}"))
            no_server_errors(outs)
            codes = Counter(r.status_code for r in outs)
            assert codes == {201: high - low, 412: BURST - (high - low)}, codes
            await all_succeed(st, [r.json()["ID"] for r in outs if r.status_code == 201])
            await st.wait_pool(name, high)

            ins = await burst(BURST, lambda i: st.http.post(f"/v1/scale/in/{name}"))
            no_server_errors(ins)
            codes = Counter(r.status_code for r in ins)
            assert codes == {201: high - low, 412: BURST - (high - low)}, codes
            await all_succeed(st, [r.json()["ID"] for r in ins if r.status_code == 201])
            view = await st.wait_pool(name, low)
        sampler.within(low, high)

        await still_answers(st, name)
        # Exactly the pool's one node is left running.
        assert len(memcached_pids(settings.state_dir)) == len(view["nodes"]) == low
        await assert_replays(st.client, f"pool/{name}", keep_as="pool_burst")


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
        sampler = Sampler(lambda: pool_size(st, name))
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
                await all_succeed(st, ids)
                await st.wait_pool(name, size)
        sampler.within(low, high)
        await still_answers(st, name)
        await assert_replays(st.client, f"pool/{name}")
