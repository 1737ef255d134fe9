"""A burst over ten pools at once through HTTP (its own file, so that pytest-xdist runs
it beside the other bursts): exact answers, no 5xx, bounds held, every accepted
operation succeeds, and every entity's history replays afterwards."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable
from pathlib import Path

import httpx
from temporalio.testing import WorkflowEnvironment

from tests.bursts import all_succeed, assert_replays, burst, no_server_errors, still_answers
from tests.e2e.stack import stack, stack_settings


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
        await all_succeed(st, accepted)
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
            await still_answers(st, name)
        for name in names:
            await assert_replays(st.client, f"pool/{name}")
