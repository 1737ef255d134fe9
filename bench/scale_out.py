"""Scale-out of a local memcached node: from the API call to the node answering.

Target: median <= 250 ms. Baseline, measured in the same run: spawn memcached directly
(the local provider's arguments) on a free port and poll until it answers ``version``.

For every scale-out, ``t0`` is just before ``POST /v1/scale/out/{pool}``.

* Main series (the target): a pool with no nodes gains its first one. The client polls
  ``GET /v1/scale/status/{id}`` until the operation reports success (``to status
  success``), then at once asks the new node for its version (``to node answering``).
  Each run has a pool of its own, so that no run pays for slot migration (a pool's first
  node takes every slot without moving any).
* Second series: a pool with one node gains a second, which moves half of the slots to
  it. The client polls the pool view until the new node is READY and answers (``node
  answering``), and the status until success (``status success``: after the migration).

The operation's own history gives a breakdown of where the time goes.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

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
GROW_RUNS = 5
POLL_S = 0.005
# A pause before the measured runs, so that they start from a settled machine.
IDLE_S = 5.0
ANSWERS = re.compile(r"at (\S+) answers")


@dataclass
class Run:
    accepted: float  # the POST's 201
    success: float  # the status document says success
    answering: float  # the new node answered version()
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


def answers(address: str) -> bool:
    return version(*split_address(address))


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


def _label(ev: HistoryEvent, names: dict[int, str]) -> str:
    """The event's type, with the activity or signal it concerns; ``names`` maps the ids
    of scheduling events to those names for the events that refer back to them."""
    name = EventType.Name(ev.event_type).removeprefix("EVENT_TYPE_").lower()
    et = ev.event_type
    if et == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
        names[ev.event_id] = ev.activity_task_scheduled_event_attributes.activity_type.name
        return f"{name} {names[ev.event_id]}"
    if et == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
        return f"{name} {names.get(ev.activity_task_started_event_attributes.scheduled_event_id)}"
    if et == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
        sched = ev.activity_task_completed_event_attributes.scheduled_event_id
        return f"{name} {names.get(sched)}"
    if et == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
        return f"{name} {ev.workflow_execution_signaled_event_attributes.signal_name}"
    if et == EventType.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED:
        attrs = ev.signal_external_workflow_execution_initiated_event_attributes
        names[ev.event_id] = attrs.signal_name
        return f"{name} {attrs.signal_name}"
    if et == EventType.EVENT_TYPE_EXTERNAL_WORKFLOW_EXECUTION_SIGNALED:
        initiated = ev.external_workflow_execution_signaled_event_attributes.initiated_event_id
        return f"{name} {names.get(initiated)}"
    return name


async def timeline(st: Stack, op_id: str, t0_ns: int) -> list[tuple[str, float]]:
    history = await st.client.get_workflow_handle(op_id).fetch_history()
    names: dict[int, str] = {}
    return [
        (_label(ev, names), (ev.event_time.ToNanoseconds() - t0_ns) / 1e6) for ev in history.events
    ]


async def post_scale_out(st: Stack, pool: str) -> tuple[str, float]:
    resp = await st.http.post(f"/v1/scale/out/{pool}")
    if resp.status_code != 201:
        raise RuntimeError(f"scale-out refused: {resp.status_code} {resp.text}")
    return resp.json()["ID"], time.perf_counter()


async def status(st: Stack, op_id: str) -> dict[str, Any] | None:
    """The operation's document once it succeeded; None while it runs."""
    resp = await st.http.get(f"/v1/scale/status/{op_id}")
    if resp.status_code != 200:
        return None
    doc = resp.json()
    if doc["Status"] in ("failed", "cancelled"):
        raise RuntimeError(f"scale-out {op_id} ended {doc['Status']}: {doc}")
    return doc if doc["Status"] == "success" else None


async def new_ready_node(st: Stack, pool: str, before: set[str]) -> str | None:
    view = await st.pool(pool)
    for node in view["nodes"]:
        if node["id"] not in before and node["state"] == "ready" and node["address"]:
            return str(node["address"])
    return None


async def first_node(st: Stack, pool: str) -> Run:
    """0 -> 1 node: poll the status until success, then ask the node at once."""
    t0_ns, t0 = time.time_ns(), time.perf_counter()
    op_id, accepted = await post_scale_out(st, pool)
    while (doc := await status(st, op_id)) is None:
        await asyncio.sleep(POLL_S)
    success = time.perf_counter()
    found = [m.group(1) for e in doc["Events"] if (m := ANSWERS.search(e["Message"]))]
    address = found[-1] if found else await new_ready_node(st, pool, set())
    if address is None or not answers(address):
        raise RuntimeError(f"the node of {op_id} does not answer: {doc}")
    answering = time.perf_counter()
    await st.wait_pool(pool, 1)  # not timed: the pool has the node and an empty queue
    return Run(accepted - t0, success - t0, answering - t0, await timeline(st, op_id, t0_ns))


async def second_node(st: Stack, pool: str) -> Run:
    """1 -> 2 nodes: the node answers before the operation ends (it migrates slots)."""
    before = {n["id"] for n in (await st.pool(pool))["nodes"]}
    t0_ns, t0 = time.time_ns(), time.perf_counter()
    op_id, accepted = await post_scale_out(st, pool)
    answering = 0.0
    while True:
        if not answering:
            address = await new_ready_node(st, pool, before)
            if address is not None and answers(address):
                answering = time.perf_counter()
        if await status(st, op_id) is not None:
            break
        await asyncio.sleep(POLL_S)
    success = time.perf_counter()
    await st.wait_pool(pool, 2)
    return Run(
        accepted - t0, success - t0, (answering or success) - t0, await timeline(st, op_id, t0_ns)
    )


async def fresh_pool(st: Stack, min_count: int) -> str:
    pool = st.pool_name()
    resp = await st.put_policy(pool, MinCount=min_count, MaxCount=100, Provider="local")
    if resp.status_code != 200:
        raise RuntimeError(f"policy refused: {resp.status_code} {resp.text}")
    await st.wait_pool(pool, min_count)
    return pool


CATEGORIES = {
    "workflow_execution_started": "pool: accept the POST, start the operation",
    "workflow_execution_signaled go": "pool: give the operation its turn (go signal)",
    "workflow_execution_signaled slot_map_changed": "slot migration: until each map update",
    "workflow_task_started": "workflow tasks waiting for the worker",
    "workflow_task_completed": "workflow tasks running in the worker",
    "external_workflow_execution_signaled node_changed": "signal node_changed to the pool",
    "external_workflow_execution_signaled slot_map_changed": "signal slot_map_changed to the pool",
    "activity_task_completed provision_node": "activity provision_node",
    "activity_task_completed node_ready": "activity node_ready",
    "child_workflow_execution_completed": "slot migration: until the child workflow ends",
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
        binary = memcached()
        for _ in range(WARMUP):
            await asyncio.to_thread(bare_spawn, binary)
        spawns = [await asyncio.to_thread(bare_spawn, binary) for _ in range(RUNS)]

        # Every run has a pool of its own, made beforehand (not timed).
        empty = [await fresh_pool(st, 0) for _ in range(WARMUP + RUNS)]
        single = [await fresh_pool(st, 1) for _ in range(GROW_RUNS)]
        await asyncio.sleep(IDLE_S)
        warm = [await first_node(st, pool) for pool in empty[:WARMUP]]
        runs = [await first_node(st, pool) for pool in empty[WARMUP:]]
        grow = [await second_node(st, pool) for pool in single]

    baseline = Series("bare spawn", spawns)
    accepted = Series("POST answered (201)", [r.accepted for r in runs])
    success = Series("to status success", [r.success for r in runs])
    answering = Series("to node answering", [r.answering for r in runs])
    print_table(
        "first node of a pool (0 -> 1), the target's series",
        [accepted, success, answering, baseline],
    )
    print(
        "warm-up scale-outs, not counted (to node answering): "
        + ", ".join(f"{r.answering * 1000:.0f} ms" for r in warm)
    )
    print_breakdown(runs)
    print_timeline(runs)

    grow_answering = Series("to node answering (pool view)", [r.answering for r in grow])
    grow_success = Series("to status success (after migration)", [r.success for r in grow])
    print_table(
        "second node of a pool (1 -> 2, moves half of the slots)", [grow_answering, grow_success]
    )
    print_breakdown(grow)

    print()
    print(ratio_line("scale-out 0->1 (to node answering)", answering, baseline, TARGET_MS))
    print(ratio_line("scale-out 0->1 (to status success)", success, baseline, TARGET_MS))
    print(ratio_line("scale-out 1->2 (to node answering)", grow_answering, baseline, TARGET_MS))
    print(ratio_line("scale-out 1->2 (to status success)", grow_success, baseline, TARGET_MS))
    return {
        "scale-out": answering,
        "scale-out baseline": baseline,
        "scale-out 1->2 answering": grow_answering,
        "scale-out 1->2 success": grow_success,
    }
