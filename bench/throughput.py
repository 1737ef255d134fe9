"""Control-plane throughput: 50 pools of ``no-op`` nodes, 20 resize requests each, fired
at once through HTTP; operations completed per second against a floor measured in the
same run on the same dev server: bare child workflows (no activities) started from one
parent workflow.

Target (issue "burst-safe entities"): at least 0.5 of the floor, no request answered 5xx.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from datetime import timedelta

from temporalio import workflow
from temporalio.worker import Worker

from bench.harness import Series, bench_stack, load

POOLS = 50
REQUESTS = 20
ROUNDS = 3


@workflow.defn(sandboxed=False)
class BareChild:
    @workflow.run
    async def run(self) -> None:
        return None


@workflow.defn(sandboxed=False)
class FloorParent:
    @workflow.run
    async def run(self, children: int) -> None:
        handles = await asyncio.gather(
            *(
                workflow.start_child_workflow(
                    BareChild.run, id=f"{workflow.info().workflow_id}-{i}"
                )
                for i in range(children)
            )
        )
        await asyncio.gather(*handles)


async def _floor(st, n: int) -> float:  # type: ignore[no-untyped-def]
    queue = f"floor-{uuid.uuid4().hex[:8]}"
    async with Worker(st.client, task_queue=queue, workflows=[FloorParent, BareChild]):
        started = time.perf_counter()
        await st.client.execute_workflow(
            FloorParent.run,
            n,
            id=f"floor-{uuid.uuid4().hex[:8]}",
            task_queue=queue,
            execution_timeout=timedelta(minutes=10),
        )
        return time.perf_counter() - started


async def _pools_round(st) -> tuple[float, Counter[int]]:  # type: ignore[no-untyped-def]
    names = [st.pool_name() for _ in range(POOLS)]
    for name in names:
        resp = await st.put_policy(
            name, MinCount=0, MaxCount=REQUESTS, Provider="no-op", Engine="none"
        )
        assert resp.status_code == 200, resp.text
    started = time.perf_counter()
    resps = await asyncio.gather(
        *(st.http.post(f"/v1/scale/out/{name}") for name in names for _ in range(REQUESTS))
    )
    codes = Counter(r.status_code for r in resps)
    pending = set(names)
    while pending:
        views = await asyncio.gather(*(st.http.get(f"/v1/pools/{n}") for n in pending))
        for name, resp in zip(list(pending), views, strict=True):
            view = resp.json()
            if len(view["nodes"]) == REQUESTS and not view["queue"]:
                pending.discard(name)
        await asyncio.sleep(0.05)
    elapsed = time.perf_counter() - started
    for name in names:
        await st.client.get_workflow_handle(f"pool/{name}").terminate("benchmark round over")
    return elapsed, codes


async def run() -> dict[str, Series]:
    ops = POOLS * REQUESTS
    print(f"throughput: {POOLS} no-op pools x {REQUESTS} scale-outs at once, {ROUNDS} rounds")
    pools, floor = [], []
    all_codes: Counter[int] = Counter()
    async with bench_stack() as st:
        for r in range(ROUNDS):
            f = await _floor(st, ops)
            p, codes = await _pools_round(st)
            floor.append(f)
            pools.append(p)
            all_codes += codes
            print(
                f"  round {r + 1}: pools {ops / p:7.1f} ops/s ({p:.1f} s), floor "
                f"{ops / f:7.1f} ops/s ({f:.1f} s), ratio {f / p:.2f}; answers {dict(codes)}; "
                f"load {load()}"
            )
    pools_s, floor_s = Series("throughput pools", pools), Series("throughput floor", floor)
    ratio = floor_s.median_ms / pools_s.median_ms
    server_errors = sum(n for code, n in all_codes.items() if code >= 500)
    verdict = "met" if ratio >= 0.5 and server_errors == 0 else "NOT met"
    print(
        f"throughput: pools {ops / (pools_s.median_ms / 1000):.1f} ops/s vs floor "
        f"{ops / (floor_s.median_ms / 1000):.1f} ops/s (medians) -> ratio {ratio:.2f}; "
        f"5xx answers {server_errors} (target ratio >= 0.5, no 5xx: {verdict})"
    )
    return {"throughput pools": pools_s, "throughput floor": floor_s}
