"""Scale-out of a local memcached node: from the API call to the node answering.

Target: median <= 250 ms. Baseline, measured in the same run: spawn memcached directly
(same arguments as the local provider) on a free port and poll until it answers ``version``.

For every scale-out, ``t0`` is just before ``POST /v1/scale/out/{pool}``. The client then
polls ``GET /v1/scale/status/{id}`` until the operation reports success (``to success``)
and at once asks the new node for its version (``to answering``). The operation's own
history gives a timeline of where the time goes.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from pymemcache.client.base import Client as Memcache
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent

from bench.harness import Series, bench_stack, median, print_table, ratio_line
from scaleflow.activities import processes
from scaleflow.activities.memcached import split_address
from tests.e2e.stack import Stack
from tests.servers import memcached

TARGET_MS = 250.0
RUNS = 30
WARMUP = 3
POLL_S = 0.005
ANSWERS = re.compile(r"at (\S+) answers")


@dataclass
class Run:
    accepted: float  # the POST's 201
    success: float  # the status document says success
    answering: float  # the node answered version() right after
    # (label, ms after t0) for each event of the operation's history
    timeline: list[tuple[str, float]] = field(default_factory=list)


def version(host: str, port: int) -> bool:
    client = Memcache((host, port), connect_timeout=0.5, timeout=0.5)
    try:
        return bool(client.version())
    except OSError:
        return False
    finally:
        client.close()


def bare_spawn(binary: str, host: str = "127.0.0.1") -> float:
    """Seconds from Popen to the first answered ``version``, as the provider starts it."""
    port = processes.free_port(host)
    args = [binary, "-l", host, "-p", str(port), "-U", "0", "-m", "64", "-c", "4096", "-t", "2"]
    if os.geteuid() == 0:
        args += ["-u", "root"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        while not version(host, port):
            if proc.poll() is not None:
                raise RuntimeError(f"memcached exited with {proc.returncode}")
            time.sleep(0.001)
        return time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait()


def _label(ev: HistoryEvent, activities: dict[int, str]) -> str:
    name = EventType.Name(ev.event_type).removeprefix("EVENT_TYPE_").lower()
    if ev.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
        activities[ev.event_id] = ev.activity_task_scheduled_event_attributes.activity_type.name
        return f"{name} {activities[ev.event_id]}"
    if ev.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
        sched = ev.activity_task_started_event_attributes.scheduled_event_id
        return f"{name} {activities.get(sched, '?')}"
    if ev.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
        sched = ev.activity_task_completed_event_attributes.scheduled_event_id
        return f"{name} {activities.get(sched, '?')}"
    return name


async def timeline(st: Stack, op_id: str, t0_ns: int) -> list[tuple[str, float]]:
    history = await st.client.get_workflow_handle(op_id).fetch_history()
    activities: dict[int, str] = {}
    return [
        (_label(ev, activities), (ev.event_time.ToNanoseconds() - t0_ns) / 1e6)
        for ev in history.events
    ]


async def scale_out_once(st: Stack, pool: str, nodes_after: int) -> Run:
    t0_ns = time.time_ns()
    t0 = time.perf_counter()
    resp = await st.http.post(f"/v1/scale/out/{pool}")
    accepted = time.perf_counter() - t0
    if resp.status_code != 201:
        raise RuntimeError(f"scale-out refused: {resp.status_code} {resp.text}")
    op_id = resp.json()["ID"]
    while True:
        status = await st.http.get(f"/v1/scale/status/{op_id}")
        if status.status_code == 200:
            doc = status.json()
            if doc["Status"] == "success":
                break
            if doc["Status"] in ("failed", "cancelled"):
                raise RuntimeError(f"scale-out {op_id} ended {doc['Status']}: {doc}")
        await asyncio.sleep(POLL_S)
    success = time.perf_counter() - t0
    addresses = [m.group(1) for e in doc["Events"] if (m := ANSWERS.search(e["Message"]))]
    if not addresses or not version(*split_address(addresses[-1])):
        raise RuntimeError(f"the node of {op_id} does not answer: {doc}")
    answering = time.perf_counter() - t0
    # Not timed: the pool has taken in the node and its queue is empty again.
    await st.wait_pool(pool, nodes_after)
    return Run(accepted, success, answering, await timeline(st, op_id, t0_ns))


CATEGORIES = {
    "workflow_execution_started": "pool: accept the POST, start the operation",
    "workflow_execution_signaled": "pool: give the operation its turn (go signal)",
    "workflow_task_started": "workflow tasks waiting for the worker",
    "workflow_task_completed": "workflow tasks running in the worker",
    "external_workflow_execution_signaled": "signal to the pool delivered",
    "activity_task_completed provision_node": "activity provision_node",
    "activity_task_completed node_ready": "activity node_ready",
}
SEEN = "status poll sees success"


def breakdown(run: Run) -> dict[str, float]:
    """Milliseconds per category: each gap between consecutive history events (in time
    order) is charged to the event that ends it; unknown events keep their own name."""
    out: dict[str, float] = {}
    prev = 0.0
    for label, at in sorted(run.timeline, key=lambda e: e[1]):
        category = CATEGORIES.get(label, f"other: {label}")
        out[category] = out.get(category, 0.0) + max(0.0, at - prev)
        prev = max(prev, at)
    out[SEEN] = max(0.0, run.success * 1000 - prev)
    return out


def print_breakdown(runs: Sequence[Run]) -> None:
    parts = [breakdown(r) for r in runs]
    names = list(dict.fromkeys(k for p in parts for k in p))
    print("\nwhere the time goes, POST to success (median ms of each step; they need not add up):")
    for name in names:
        values = [p.get(name, 0.0) for p in parts]
        print(f"  {median(values):>7.1f} ms  {name}")
    wfts = [sum(1 for label, _ in r.timeline if label == "workflow_task_completed") for r in runs]
    print(f"  (the operation alone runs {median(wfts):.0f} workflow tasks; the pool runs more)")


def print_timeline(runs: Sequence[Run]) -> None:
    shapes: dict[tuple[str, ...], list[Run]] = {}
    for r in runs:
        shapes.setdefault(tuple(label for label, _ in r.timeline), []).append(r)
    shape, same = max(shapes.items(), key=lambda kv: len(kv[1]))
    print(f"\noperation history, median ms after the POST ({len(same)} of {len(runs)} runs):")
    prev = 0.0
    for i, label in enumerate(shape):
        at = median([r.timeline[i][1] for r in same])
        print(f"  {at:>7.1f} ms  (+{at - prev:>6.1f})  {label}")
        prev = at
    success = median([r.success * 1000 for r in same])
    print(f"  {success:>7.1f} ms  (+{success - prev:>6.1f})  {SEEN}")


async def run() -> dict[str, Series]:
    print("=" * 78)
    print(f"scale-out: local memcached node, API call to node answering ({RUNS} runs)")
    print("=" * 78)
    async with bench_stack() as st:
        pool = st.pool_name()
        resp = await st.put_policy(pool, MinCount=0, MaxCount=100, Provider="local")
        if resp.status_code != 200:
            raise RuntimeError(f"policy refused: {resp.status_code} {resp.text}")
        await st.wait_pool(pool, 0)

        binary = memcached()
        for _ in range(WARMUP):
            await asyncio.to_thread(bare_spawn, binary)
        spawns = [await asyncio.to_thread(bare_spawn, binary) for _ in range(RUNS)]

        nodes = 0
        warm = []
        for _ in range(WARMUP):
            nodes += 1
            warm.append(await scale_out_once(st, pool, nodes))
        runs = []
        for _ in range(RUNS):
            nodes += 1
            runs.append(await scale_out_once(st, pool, nodes))

    baseline = Series("bare spawn", spawns)
    accepted = Series("POST answered (201)", [r.accepted for r in runs])
    success = Series("to status success", [r.success for r in runs])
    answering = Series("to node answering", [r.answering for r in runs])
    print_table("results", [accepted, success, answering, baseline])
    print(
        "warm-up scale-outs, not counted (to node answering): "
        + ", ".join(f"{r.answering * 1000:.0f} ms" for r in warm)
    )
    print_breakdown(runs)
    print_timeline(runs)
    print()
    print(ratio_line("scale-out (to node answering)", answering, baseline, TARGET_MS))
    print(ratio_line("scale-out (to status success)", success, baseline, TARGET_MS))
    return {"scale-out": answering, "scale-out baseline": baseline}
