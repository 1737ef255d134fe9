"""Control-plane throughput (issue "burst-safe entities"): 50 pools of ``no-op`` nodes
(engine ``none``), 20 scale-out requests each, fired at once through HTTP; operations
completed per second against a floor measured in the same run: bare child workflows (no
activities, no signals) started at once from one parent workflow, N = 50 x 20.

Target: at least 0.5 of the floor, and no request answered 5xx.

The parts run as deployed, each in a process of its own on the same dev server: the
scaleflow worker (``python -m scaleflow.worker``), the API (``python -m scaleflow.cli
api``), and the floor's worker (``python -m bench.floor_worker``, configured as
scaleflow's is). This process only sends the requests (httpx, one connection per
request) and reads Temporal.

* Pools: ``t0`` just before the 1,000 POSTs ``/v1/scale/out/{pool}``. Until a
  visibility count shows every accepted operation closed, only that cheap count is
  polled (every 0.5 s): polling 50 pool views would add a query per pool, work for the
  worker and the server, each time. Then each pool's view must show as many nodes as it
  accepted requests and an empty queue. The end time is read from the pools' histories
  (the workflow task that reaped a pool's last operation, the moment its view showed it
  done), so the polling interval does not round it. Afterwards ``GET
  /v1/scale/status?pool=<pool>`` must show every accepted operation as ``success``; only
  those count.
* Floor: ``t0`` just before the parent starts; its close time ends it.

Each round creates 50 new pools and terminates them afterwards. Three rounds; medians.
The CPU time of each process over each phase and the histories of a few pools and their
operations show where the time goes.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import httpx
from temporalio.api.enums.v1 import EventType, TaskQueueKind
from temporalio.api.history.v1 import HistoryEvent

from bench.floor_worker import FLOOR_PARENT
from bench.harness import LOAD, ProcessStack, Series, cpu_seconds, load, percentile, process_stack

POOLS = 50
REQUESTS = 20
OPS = POOLS * REQUESTS
ROUNDS = 3
TARGET_RATIO = 0.5
POLL_S = 0.5
DONE_TIMEOUT_S = 240.0
# Pause between phases, so that each starts from a settled server.
SETTLE_S = 2.0
# Pools whose operations' histories are read for the breakdown, per round.
PROFILED_POOLS = 3
# The code counted for a request that got no HTTP answer at all.
NO_ANSWER = 0
FLOOR_QUEUE = f"floor-{uuid.uuid4().hex[:8]}"

ET = EventType


@dataclass
class Phase:
    """One timed phase: seconds from t0 to its end, and CPU seconds per process."""

    elapsed_s: float
    cpu: dict[str, float]
    workflow_id: str = ""


@dataclass
class PoolsRound(Phase):
    codes: Counter[int] = field(default_factory=Counter)
    successes: int = 0
    # Seconds from t0 to each request's answer.
    answers_s: list[float] = field(default_factory=list)
    # Until the last pool was seen done by polling (>= elapsed_s).
    observed_s: float = 0.0


@dataclass
class Profile:
    """What the histories show, summed over the profiled pools' operations."""

    ops: int = 0
    # Counts per operation, by history and kind.
    counts: Counter[str] = field(default_factory=Counter)
    # Workflow task latencies (s): scheduled -> started, started -> completed.
    dispatch: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    run: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    # Workflow tasks after the first that were not sent to the worker's sticky queue.
    unsticky: Counter[str] = field(default_factory=Counter)
    # One step of a pool (an operation's turn, from the previous one's close in the
    # pool's history to its own): seconds charged to the event that ends each gap.
    steps: list[dict[str, float]] = field(default_factory=list)
    # A pool's whole run: its first operation's start to its last one's close.
    pool_spans: list[float] = field(default_factory=list)
    # Per operation, by history ("pool", "operation"; "parent", "child"): workflow tasks
    # and history events.
    tasks: dict[str, float] = field(default_factory=dict)
    events: dict[str, float] = field(default_factory=dict)

    def per_op_from_counts(self) -> None:
        for who in ("pool", "operation"):
            mine = {k: n for k, n in self.counts.items() if k.startswith(f"{who}: ")}
            self.tasks[who] = mine.get(f"{who}: workflow_task_completed", 0) / self.ops
            self.events[who] = sum(mine.values()) / self.ops


# ---- reading histories -------------------------------------------------------------


def _t(ev: HistoryEvent) -> float:
    return ev.event_time.ToNanoseconds() / 1e9


def _kind(ev: HistoryEvent) -> str:
    return ET.Name(ev.event_type).removeprefix("EVENT_TYPE_").lower()


def _labels(events: Sequence[HistoryEvent]) -> list[str]:
    """Each event's type, with the activity or signal it concerns."""
    names: dict[int, str] = {}
    out = []
    for ev in events:
        label, et = _kind(ev), ev.event_type
        if et == ET.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            names[ev.event_id] = ev.activity_task_scheduled_event_attributes.activity_type.name
            label += f" {names[ev.event_id]}"
        elif et == ET.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            sched = ev.activity_task_started_event_attributes.scheduled_event_id
            label += f" {names.get(sched)}"
        elif et == ET.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            sched = ev.activity_task_completed_event_attributes.scheduled_event_id
            label += f" {names.get(sched)}"
        elif et == ET.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
            label += f" {ev.workflow_execution_signaled_event_attributes.signal_name}"
        elif et == ET.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED:
            attrs = ev.signal_external_workflow_execution_initiated_event_attributes
            names[ev.event_id] = attrs.signal_name
            label += f" {attrs.signal_name}"
        elif et == ET.EVENT_TYPE_EXTERNAL_WORKFLOW_EXECUTION_SIGNALED:
            initiated = ev.external_workflow_execution_signaled_event_attributes
            label += f" {names.get(initiated.initiated_event_id)}"
        out.append(label)
    return out


async def _history(st: ProcessStack, workflow_id: str) -> list[HistoryEvent]:
    history = await st.client.get_workflow_handle(workflow_id).fetch_history()
    return list(history.events)


def _task_latencies(events: Sequence[HistoryEvent], since: float, who: str, prof: Profile) -> None:
    at: dict[int, HistoryEvent] = {ev.event_id: ev for ev in events}
    for ev in events:
        if ev.event_type != ET.EVENT_TYPE_WORKFLOW_TASK_COMPLETED or _t(ev) < since:
            continue
        attrs = ev.workflow_task_completed_event_attributes
        started, scheduled = at[attrs.started_event_id], at[attrs.scheduled_event_id]
        prof.dispatch[who].append(_t(started) - _t(scheduled))
        prof.run[who].append(_t(ev) - _t(started))
        # After its first task a workflow's tasks go to the worker's sticky queue, where
        # it is cached; one on the normal queue means it was not (a sticky task timed
        # out, or the worker had let it go): the task replays the whole history.
        queue = scheduled.workflow_task_scheduled_event_attributes.task_queue
        if scheduled.event_id > 2 and queue.kind != TaskQueueKind.TASK_QUEUE_KIND_STICKY:
            prof.unsticky[who] += 1


def _reaped_at(events: Sequence[HistoryEvent]) -> float | None:
    """When the pool's view first showed its last operation gone: the completion of the
    workflow task after that operation's close."""
    closes = [i for i, ev in enumerate(events) if ev.event_type in _CHILD_CLOSED]
    if not closes:
        return None
    for ev in events[closes[-1] :]:
        if ev.event_type == ET.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            return _t(ev)
    return None


_CHILD_CLOSED = {
    ET.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_COMPLETED,
    ET.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_FAILED,
    ET.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_CANCELED,
    ET.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_TERMINATED,
    ET.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_TIMED_OUT,
}


def _child_closed_id(ev: HistoryEvent) -> str:
    for attr in (
        "child_workflow_execution_completed_event_attributes",
        "child_workflow_execution_failed_event_attributes",
        "child_workflow_execution_canceled_event_attributes",
        "child_workflow_execution_terminated_event_attributes",
        "child_workflow_execution_timed_out_event_attributes",
    ):
        if ev.HasField(attr):
            return str(getattr(ev, attr).workflow_execution.workflow_id)
    return ""


async def _profile_pool(
    st: ProcessStack, pool: list[HistoryEvent], t0: float, prof: Profile
) -> None:
    """Counts, task latencies and step breakdowns of one pool and its operations."""
    closes = [ev for ev in pool if ev.event_type in _CHILD_CLOSED]
    op_ids = [_child_closed_id(ev) for ev in closes]
    ops = dict(zip(op_ids, await asyncio.gather(*(_history(st, i) for i in op_ids)), strict=True))
    prof.ops += len(op_ids)
    pool_labels = _labels(pool)
    for ev, label in zip(pool, pool_labels, strict=True):
        if _t(ev) >= t0:
            prof.counts[f"pool: {label}"] += 1
    _task_latencies(pool, t0, "pool", prof)
    for events in ops.values():
        for label in _labels(events):
            prof.counts[f"operation: {label}"] += 1
        _task_latencies(events, t0, "operation", prof)
    starts = [_t(ops[i][0]) for i in op_ids if ops[i]]
    if starts:
        prof.pool_spans.append(_t(closes[-1]) - min(starts))
    # Each step after the first: merge the pool's and the operation's events between the
    # previous operation's close and this one's, and charge each gap to its end.
    for prev, close, op_id in zip(closes, closes[1:], op_ids[1:], strict=False):
        lo, hi = _t(prev), _t(close)
        merged = [
            (_t(ev), f"pool: {lab}")
            for ev, lab in zip(pool, pool_labels, strict=True)
            if lo < _t(ev) <= hi
        ]
        op_events = ops[op_id]
        merged += [
            (_t(ev), f"operation: {lab}")
            for ev, lab in zip(op_events, _labels(op_events), strict=True)
            if lo < _t(ev) <= hi
        ]
        merged.sort()
        step: dict[str, float] = defaultdict(float)
        last = lo
        for at, label in merged:
            step[label] += at - last
            last = at
        prof.steps.append(dict(step))


# ---- the two phases ------------------------------------------------------------------


def _cpu(st: ProcessStack) -> dict[str, float]:
    return {name: cpu_seconds(pid) for name, pid in st.pids().items()}


def _cpu_since(st: ProcessStack, before: dict[str, float]) -> dict[str, float]:
    return {name: cpu - before.get(name, 0.0) for name, cpu in _cpu(st).items()}


async def floor_round(st: ProcessStack, n: int) -> Phase:
    st.parts["floor worker"].check()
    before = _cpu(st)
    t0 = time.time()
    handle = await st.client.start_workflow(
        FLOOR_PARENT,
        n,
        id=f"floor-{uuid.uuid4().hex[:8]}",
        task_queue=FLOOR_QUEUE,
        execution_timeout=timedelta(minutes=5),
    )
    got = await handle.result()
    assert got == n, got
    cpu = _cpu_since(st, before)
    desc = await handle.describe()
    assert desc.close_time is not None
    return Phase(elapsed_s=desc.close_time.timestamp() - t0, cpu=cpu, workflow_id=handle.id)


async def _policies(st: ProcessStack, names: list[str], requests: int) -> None:
    resps = await asyncio.gather(
        *(
            st.put_policy(name, MinCount=0, MaxCount=requests, Provider="no-op", Engine="none")
            for name in names
        )
    )
    for resp in resps:
        assert resp.status_code == 200, resp.text


async def _successes(st: ProcessStack, names: list[str]) -> int:
    gate = asyncio.Semaphore(4)

    async def one(name: str) -> int:
        for _ in range(5):
            async with gate:
                resp = await st.http.get("/v1/scale/status", params={"pool": name})
            if resp.status_code < 500:
                break
            await asyncio.sleep(1.0)
        assert resp.status_code == 200, resp.text
        return sum(1 for doc in resp.json().values() if doc["Status"] == "success")

    return sum(await asyncio.gather(*(one(n) for n in names)))


async def _wait_closed(st: ProcessStack, t0: float, ops: int) -> None:
    """Until visibility counts ``ops`` operations started since ``t0`` closed: one cheap
    count every ``POLL_S``, where polling 50 pool views would add a query per pool (a
    workflow task's worth of work in the worker and the server) each time."""
    since = datetime.fromtimestamp(t0 - 1, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    query = (
        f"WorkflowType = 'ScaleOutWorkflow' AND ExecutionStatus != 'Running' "
        f"AND StartTime > '{since}'"
    )
    deadline = time.monotonic() + DONE_TIMEOUT_S
    while (await st.client.count_workflows(query)).count < ops:
        if time.monotonic() > deadline:
            raise RuntimeError(f"operations not closed after {DONE_TIMEOUT_S:g} s")
        for part in st.parts.values():
            part.check()
        await asyncio.sleep(POLL_S)


async def pools_round(
    st: ProcessStack, pools: int, requests: int, prof: Profile | None = None
) -> PoolsRound:
    names = [st.pool_name() for _ in range(pools)]
    await _policies(st, names, requests)
    await asyncio.sleep(SETTLE_S)  # each new pool syncs its (empty) membership first
    for part in st.parts.values():
        part.check()
    before = _cpu(st)
    t0 = time.time()

    # As from many clients: a connection each, none reused (a kept-alive connection that
    # the server closes as it is reused fails without an answer).
    limits = httpx.Limits(max_connections=pools * requests, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=st.http.base_url, timeout=120, limits=limits) as burst:

        async def post(name: str) -> tuple[str, int, float]:
            try:
                resp = await burst.post(f"/v1/scale/out/{name}")
            except httpx.TransportError:
                return name, NO_ANSWER, time.time() - t0
            return name, resp.status_code, time.time() - t0

        answers = await asyncio.gather(*(post(n) for n in names for _ in range(requests)))
    codes = Counter(code for _, code, _ in answers)
    accepted = Counter(name for name, code, _ in answers if code == 201)
    await _wait_closed(st, t0, sum(accepted.values()))
    # Then the pools' own word: every one shows its nodes and an empty queue.
    pending = set(names)
    deadline = time.monotonic() + DONE_TIMEOUT_S
    seen: dict[str, dict] = {}
    while pending:
        if time.monotonic() > deadline:
            stuck = {
                n: {
                    "answers": Counter(c for m, c, _ in answers if m == n),
                    "nodes": len(seen.get(n, {}).get("nodes", [])),
                    "queue": seen.get(n, {}).get("queue"),
                    "running": seen.get(n, {}).get("running"),
                }
                for n in sorted(pending)
            }
            raise RuntimeError(f"{len(pending)} pools not done after {DONE_TIMEOUT_S:g} s: {stuck}")
        order = sorted(pending)
        views = await asyncio.gather(*(st.http.get(f"/v1/pools/{n}") for n in order))
        for name, resp in zip(order, views, strict=True):
            if resp.status_code != 200:
                continue  # a query refused for load (503): asked again at the next poll
            view = seen[name] = resp.json()
            if len(view["nodes"]) == accepted[name] and not view["queue"]:
                pending.discard(name)
        if pending:
            await asyncio.sleep(POLL_S)
    observed = time.time() - t0
    cpu = _cpu_since(st, before)
    histories = await asyncio.gather(*(_history(st, f"pool/{n}") for n in names))
    reaped = [_reaped_at(h) for h in histories]
    ends = [r for r, n in zip(reaped, names, strict=True) if r is not None and accepted[n]]
    if prof is not None:
        for events in histories[:PROFILED_POOLS]:
            await _profile_pool(st, events, t0, prof)
    successes = await _successes(st, names)
    await asyncio.gather(
        *(
            st.client.get_workflow_handle(f"pool/{n}").terminate("benchmark round over")
            for n in names
        )
    )
    return PoolsRound(
        elapsed_s=max(ends) - t0 if ends else observed,
        cpu=cpu,
        codes=codes,
        successes=successes,
        answers_s=[at for _, _, at in answers],
        observed_s=observed,
    )


# ---- report --------------------------------------------------------------------------


def _cpu_line(label: str, phase: Phase, ops: int) -> str:
    parts = ", ".join(
        f"{name} {1000 * cpu / ops:.1f}"
        for name, cpu in sorted(phase.cpu.items())
        if cpu > 0.005 and name != LOAD
    )
    total = sum(cpu for name, cpu in phase.cpu.items() if name != LOAD)
    return (
        f"    {label:<6} CPU ms per operation: {parts}; total {1000 * total / ops:.1f} "
        f"({total / phase.elapsed_s:.2f} cores busy); load generator "
        f"{1000 * phase.cpu.get(LOAD, 0.0) / ops:.1f}"
    )


def _scaleflow_cpu(phase: Phase) -> float:
    """CPU seconds per operation of every process but the load generator."""
    return sum(cpu for name, cpu in phase.cpu.items() if name != LOAD) / OPS


def _ms(xs: Sequence[float]) -> str:
    if not xs:
        return "-"
    return f"median {1000 * statistics.median(xs):6.1f} ms, p90 {1000 * percentile(xs, 90):6.1f} ms"


def print_profile(prof: Profile, floor: Profile) -> None:
    print(f"  where the time goes ({prof.ops} operations of {PROFILED_POOLS} pools per round):")
    print("    per operation (pool's history and the operation's own):")
    for label, n in sorted(prof.counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if n / prof.ops >= 0.5 and not label.endswith("_task_scheduled"):
            print(f"      {n / prof.ops:5.2f}  {label}")
    prof.per_op_from_counts()
    for label, p in (("pools", prof), ("floor", floor)):
        print(
            f"    {label}: {sum(p.tasks.values()):.2f} workflow tasks per operation ("
            + ", ".join(f"{who} {n:.2f}" for who, n in p.tasks.items())
            + f"), {sum(p.events.values()):.1f} history events ("
            + ", ".join(f"{who} {n:.1f}" for who, n in p.events.items())
            + ")"
        )
    print("    workflow tasks, scheduled -> started (dispatch) and started -> completed (run):")
    for who, p in (("pool", prof), ("operation", prof), ("parent", floor), ("child", floor)):
        print(
            f"      {who:<9} dispatch {_ms(p.dispatch[who])}; run {_ms(p.run[who])}; "
            f"{p.unsticky[who]} of {len(p.run[who])} off the sticky queue"
        )
    if prof.pool_spans:
        span = statistics.median(prof.pool_spans)
        print(
            f"    a pool's {REQUESTS} operations, first start to last close: median {span:.1f} s "
            f"({1000 * span / REQUESTS:.0f} ms per operation, one at a time)"
        )
    if prof.steps:
        total = statistics.median(sum(s.values()) for s in prof.steps)
        print(
            f"    one step of a pool (previous operation's close to this one's), median "
            f"{1000 * total:.0f} ms; median ms charged to the event that ends each gap:"
        )
        labels = {label for s in prof.steps for label in s}
        rows = sorted(
            ((statistics.median(s.get(label, 0.0) for s in prof.steps), label) for label in labels),
            reverse=True,
        )
        for ms, label in rows:
            if ms >= 0.0005:
                print(f"      {1000 * ms:7.1f}  {label}")


async def _floor_profile(st: ProcessStack, parent_id: str, prof: Profile) -> None:
    """Task latencies and counts of a floor parent and 50 of its children."""
    parent = await _history(st, parent_id)
    _task_latencies(parent, 0, "parent", prof)
    kids = await asyncio.gather(*(_history(st, f"{parent_id}-{i}") for i in range(0, OPS, 20)))
    for events in kids:
        _task_latencies(events, 0, "child", prof)

    def tasks(events: Sequence[HistoryEvent]) -> int:
        return sum(1 for ev in events if ev.event_type == ET.EVENT_TYPE_WORKFLOW_TASK_COMPLETED)

    prof.tasks = {"parent": tasks(parent) / OPS, "child": sum(map(tasks, kids)) / len(kids)}
    prof.events = {"parent": len(parent) / OPS, "child": sum(map(len, kids)) / len(kids)}


async def run() -> dict[str, Series]:
    print(
        f"throughput: {POOLS} no-op pools x {REQUESTS} scale-outs at once through HTTP, vs "
        f"{OPS} bare children of one parent; {ROUNDS} rounds; worker, API and floor worker "
        "each in a process of their own"
    )
    floors: list[Phase] = []
    rounds: list[PoolsRound] = []
    prof, floor_prof = Profile(), Profile()
    async with process_stack() as st:
        st.add_part("floor worker", ["bench.floor_worker"], SCALEFLOW_TASK_QUEUE=FLOOR_QUEUE)
        # Warm-up, not counted: each worker's first workflows of each type, the API's
        # first requests.
        await floor_round(st, 20)
        await pools_round(st, 2, 3)
        for r in range(ROUNDS):
            await asyncio.sleep(SETTLE_S)
            f = await floor_round(st, OPS)
            await asyncio.sleep(SETTLE_S)
            p = await pools_round(st, POOLS, REQUESTS, prof)
            floors.append(f)
            rounds.append(p)
            server_errors = sum(n for code, n in p.codes.items() if code >= 500)
            print(
                f"  round {r + 1}: pools {p.successes / p.elapsed_s:6.1f} ops/s "
                f"({p.successes} succeeded in {p.elapsed_s:.1f} s; seen by polling "
                f"{p.observed_s:.1f} s), floor {OPS / f.elapsed_s:6.1f} ops/s "
                f"({f.elapsed_s:.1f} s); ratio "
                f"{(p.successes / p.elapsed_s) / (OPS / f.elapsed_s):.2f}; answers "
                f"{dict(sorted(p.codes.items()))} (5xx {server_errors}), last answer at "
                f"{max(p.answers_s):.1f} s; load {load()}"
            )
            print(_cpu_line("floor", f, OPS))
            print(_cpu_line("pools", p, OPS))
        await _floor_profile(st, floors[-1].workflow_id, floor_prof)
    pool_rates = [p.successes / p.elapsed_s for p in rounds]
    floor_rates = [OPS / f.elapsed_s for f in floors]
    pools_rate, floor_rate = statistics.median(pool_rates), statistics.median(floor_rates)
    ratio = pools_rate / floor_rate
    codes: Counter[int] = sum((p.codes for p in rounds), Counter())
    server_errors = sum(n for code, n in codes.items() if code >= 500)
    failed = server_errors + codes[NO_ANSWER]
    verdict = "met" if ratio >= TARGET_RATIO and failed == 0 else "NOT met"
    print(
        f"throughput: pools {pools_rate:.1f} ops/s vs floor {floor_rate:.1f} ops/s (medians "
        f"of {ROUNDS}) -> ratio {ratio:.2f}; answers {dict(sorted(codes.items()))}: "
        f"429 {codes[429]}, 5xx {server_errors}, no answer {codes[NO_ANSWER]} (target ratio "
        f">= {TARGET_RATIO}, no 5xx and every request answered: {verdict}); load {load()}"
    )
    # The machine is shared: the floor and the pools run minutes apart and get different
    # shares of it. Per round the two are 1 to 2 minutes apart; CPU time per operation
    # does not depend on the share.
    per_round = statistics.median(p / f for p, f in zip(pool_rates, floor_rates, strict=True))
    pools_cpu = statistics.median(_scaleflow_cpu(p) for p in rounds)
    floor_cpu = statistics.median(_scaleflow_cpu(f) for f in floors)
    print(
        f"  median of the per-round ratios {per_round:.2f}; CPU per operation (every process "
        f"but the load generator): pools {1000 * pools_cpu:.1f} ms, floor "
        f"{1000 * floor_cpu:.1f} ms -> ratio if both had the CPU to themselves "
        f"{floor_cpu / pools_cpu:.2f}"
    )
    print_profile(prof, floor_prof)
    # What one workflow task and one history event cost, each side: if these match, the
    # count of tasks and events per operation is the whole difference.
    pool_tasks, floor_tasks = sum(prof.tasks.values()), sum(floor_prof.tasks.values())
    pool_events, floor_events = sum(prof.events.values()), sum(floor_prof.events.values())

    def cpu_ms(phases: Sequence[Phase], name: str) -> float:
        return statistics.median(1000 * ph.cpu.get(name, 0.0) / OPS for ph in phases)

    print(
        f"    worker CPU per workflow task: pools {cpu_ms(rounds, 'worker') / pool_tasks:.1f} ms, "
        f"floor {cpu_ms(floors, 'floor worker') / floor_tasks:.1f} ms; dev server CPU per "
        f"history event: pools {cpu_ms(rounds, 'dev server') / pool_events:.2f} ms, floor "
        f"{cpu_ms(floors, 'dev server') / floor_events:.2f} ms (medians of the rounds)"
    )
    return {
        "throughput pools": Series("throughput pools", [p.elapsed_s for p in rounds]),
        "throughput floor": Series("throughput floor", [f.elapsed_s for f in floors]),
    }
