"""The simulated day of minute-by-minute autoscaling on the time-skipping server.

Target (issue #4): the test of a simulated 24 h runs in < 10 s. This measures the
test's own scenario (``tests/workflows/test_autoscaler.py``) and, in the same run,
two floors on the same server and SDK that no pool workflow can go below:

* ``timer only``: a workflow that wakes on a 60 s timer 1,440 times and does nothing;
* ``timer + local activity``: the same, with one trivial local activity per wake-up,
  the least a reading can cost (it must ask the nodes or CloudWatch, which takes I/O,
  which a workflow can only do through an activity).
"""

from __future__ import annotations

import itertools
import time
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from bench.harness import Series, print_table
from tests.conftest import time_skipping_env
from tests.workflows.test_autoscaler import MINUTES, oracle, simulate_day

TARGET_S = 10.0


@activity.defn
async def read_nothing(i: int) -> int:
    return i


@workflow.defn(sandboxed=False)
class MinuteLoop:
    @workflow.run
    async def run(self, with_activity: bool) -> None:
        n = 0
        while True:
            await workflow.sleep(timedelta(minutes=1))
            if with_activity:
                n = await workflow.execute_local_activity(
                    read_nothing, n + 1, start_to_close_timeout=timedelta(seconds=5)
                )


async def floor(with_activity: bool) -> float:
    """Seconds for a day of wake-ups, skipped an hour at a time as the test does."""
    async with (
        await time_skipping_env() as env,
        Worker(env.client, task_queue="floor", workflows=[MinuteLoop], activities=[read_nothing]),
    ):
        handle = await env.client.start_workflow(
            MinuteLoop.run, with_activity, id="floor", task_queue="floor"
        )
        t0 = time.perf_counter()
        for _ in range(MINUTES // 60):
            await env.sleep(timedelta(hours=1))
        spent = time.perf_counter() - t0
        await handle.terminate()
    return spent


async def day(**options: object) -> tuple[float, int]:
    t0 = time.perf_counter()
    result = await simulate_day(**options)
    spent = time.perf_counter() - t0
    expected = oracle(result.rates[: result.readings], 1, 1, 8)
    if result.observed != expected[: result.readings]:
        raise RuntimeError("the pool did not follow the rule")
    resizes = sum(1 for a, b in itertools.pairwise(expected) if a != b)
    return spent, resizes


async def run() -> dict[str, Series]:
    print("=" * 78)
    print("a simulated day of autoscaling on the time-skipping server (1,440 readings)")
    print("=" * 78)
    timer = await floor(False)
    timer_la = await floor(True)
    sandboxed, resizes = await day()
    unsandboxed, _ = await day(workflow_runner=UnsandboxedWorkflowRunner())
    rows = [
        Series("the test's day (sandboxed, as tested)", [sandboxed]),
        Series("the same day without the sandbox", [unsandboxed]),
        Series("floor: timer only", [timer]),
        Series("floor: timer + local activity", [timer_la]),
    ]
    print_table(f"time for 24 h ({resizes} resizes in the day)", rows)
    per = timer_la / MINUTES * 1000
    print(
        f"\n  floor per reading: {per:.1f} ms (timer + local activity); a day of readings "
        f"alone: {timer_la:.1f} s vs target < {TARGET_S:.0f} s"
    )
    print(
        f"  the test's day: {sandboxed:.1f} s = {sandboxed / timer_la:.1f}x the floor "
        f"(target < {TARGET_S:.0f} s: {'met' if sandboxed < TARGET_S else 'NOT met'})"
    )
    return {"autoscaler day": rows[0], "autoscaler day floor": rows[3]}
