"""The chaos harness: one operation, one boundary between activities, one fault.

A case builds a pool with an in-process worker, then runs the operation on a
subprocess worker started with the test hook of ``scaleflow.worker``
(``SCALEFLOW_TEST_KILL_*``), which counts the operation's completed activities:

- ``kill``: the hooked worker SIGKILLs itself right after the N-th activity returns,
  before the result reaches the server; a new worker then finishes the operation.
- ``cancel``: once the hook has counted N, the operation is cancelled through the API.
- ``none``: the baseline; its history gives k, the number of activities to cut after.

Afterwards the pool must be whole: the pool's view, the provider's records and the
real processes agree, no memcached process is left over, every slot is owned once
(and evenly), and no key written before the operation is lost. A cancel that comes
after the end ("late", the API answers 409) or that the operation does not act on
("cancel ignored": accepted, yet it succeeded) is not a failure in itself: then the
success is checked. The table's ``nodes`` is "found/expected".

A worker killed mid-activity leaves that attempt "started" until its timeout (up to
120 s for ``terminate_node``). Unless ``CHAOS_NATURAL_TIMEOUTS=1``, the harness does
what that timeout would do, at once: it fails the dead worker's started attempts
(retryable, keeping their heartbeat details) and clears the workflows' sticky queues,
so the retry is the same retry, only sooner. Workflow tasks the dead worker held
(a local activity's) still wait out their 10 s timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType, PendingActivityState
from temporalio.api.failure.v1 import ApplicationFailureInfo, Failure
from temporalio.api.workflowservice.v1 import (
    ResetStickyTaskQueueRequest,
    RespondActivityTaskFailedByIdRequest,
)
from temporalio.client import Client
from temporalio.service import RPCError

from scaleflow.activities.providers.local import LocalProvider
from scaleflow.core.settings import Settings
from scaleflow.core.slots import SlotMap
from scaleflow.worker import (
    TEST_COUNTER_ENV,
    TEST_KILL_AFTER_ENV,
    TEST_WORKFLOW_TYPES_ENV,
    build_worker,
)
from tests.doubles.nomad_double import NomadApiDouble
from tests.e2e.slot_helpers import keyset, missing, owned_once, write_all
from tests.e2e.stack import WorkerProcess, memcached_pids, running_api, stack_settings
from tests.polling import Backoff

KEYS = 300
CASE_TIMEOUT_S = 240
CONCURRENCY = int(os.environ.get("CHAOS_CONCURRENCY", "3"))
NATURAL_TIMEOUTS = os.environ.get("CHAOS_NATURAL_TIMEOUTS") == "1"
# The operations' own workflows: the pool entity's activities (membership sync,
# statistics) run on their own clock and must not move the count.
OPERATION_TYPES = (
    "ScaleOutWorkflow",
    "ScaleInWorkflow",
    "SlotMigrationWorkflow",
    "ConfigRolloutWorkflow",
    "DataClearWorkflow",
)
TERMINAL = ("success", "failed", "cancelled")
NOMAD_CLASS = "chaos"
NOMAD_IDLE_ALLOCS = 20
LOCAL_ACTIVITY_MARKER = "core_local_activity"


# ---- the table ------------------------------------------------------------------------


@dataclass
class Row:
    operation: str
    n: int
    mode: str
    result: str = "?"
    nodes: str = "?"
    leaked: int | None = None
    keys_lost: str = "-"
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)
    # Only for the baseline: what the operation's history holds.
    activities: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


ROWS: list[Row] = []
# Set by tests/conftest.py: where every pytest-xdist worker adds its rows, so the
# controller can print the whole matrix at the end.
ROWS_FILE_ENV = "SCALEFLOW_CHAOS_ROWS"


def record(rows: list[Row]) -> None:
    ROWS.extend(rows)
    path = os.environ.get(ROWS_FILE_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as out:
            for r in rows:
                out.write(json.dumps(dataclasses.asdict(r)) + "\n")


def recorded(path: str) -> list[Row]:
    try:
        with open(path, encoding="utf-8") as f:
            return [Row(**json.loads(line)) for line in f if line.strip()]
    except FileNotFoundError:
        return []


COLUMNS = ("operation", "N", "fault", "result", "nodes", "leaked", "keys lost", "seconds", "ok")


def table(rows: list[Row]) -> str:
    cells = [
        (
            r.operation,
            str(r.n),
            r.mode,
            r.result,
            r.nodes,
            "?" if r.leaked is None else str(r.leaked),
            r.keys_lost,
            f"{r.seconds:.1f}",
            "ok" if r.ok else "FAIL",
        )
        for r in rows
    ]
    widths = [max(len(c[i]) for c in [COLUMNS, *cells]) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    head = "  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True))
    out = [head, "-" * len(head), *lines]
    for r in rows:
        out += [f"  {r.operation} N={r.n} {r.mode}: {p}" for p in r.problems]
    return "\n".join(out)


# ---- operations -------------------------------------------------------------------------


@dataclass(frozen=True)
class Operation:
    name: str
    nodes: int  # pool size before the operation
    keys: int  # keys written through the client library before it
    nomad: bool = False

    @property
    def slotted(self) -> bool:
        return not self.nomad


OPERATIONS = [
    Operation("scale-out", nodes=1, keys=KEYS),
    Operation("scale-in", nodes=2, keys=KEYS),
    Operation("scale-in-nomad", nodes=2, keys=0, nomad=True),
    # Two sources hand slots to the new node at once (the pool's migration limit is 2).
    Operation("migration", nodes=2, keys=KEYS),
    Operation("rollout", nodes=1, keys=KEYS),
    Operation("data-clear", nodes=2, keys=KEYS),
]


@dataclass
class Aws:
    """moto's server and the Nomad API double, for the nomad engine's cases."""

    endpoint: str
    autoscaling: Any
    ec2: Any
    make_asg: Callable[..., str]
    nomad: NomadApiDouble
    nomad_url: str

    def instances(self, asg: str) -> list[str]:
        desc = self.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[asg])
        return [i["InstanceId"] for i in desc["AutoScalingGroups"][0]["Instances"]]

    def instance_state(self, instance: str) -> str:
        desc = self.ec2.describe_instances(InstanceIds=[instance])
        return str(desc["Reservations"][0]["Instances"][0]["State"]["Name"])


@dataclass
class Env:
    client: Client
    tmp: Callable[[str], Path]
    aws: Aws | None = None


# ---- one case ------------------------------------------------------------------------------


@dataclass
class Case:
    env: Env
    op: Operation
    n: int
    mode: str
    row: Row
    settings: Settings
    http: httpx.AsyncClient
    pool: str
    counter: Path
    asg: str | None = None
    nomad_nodes: dict[str, str] = field(default_factory=dict)  # instance id -> Nomad node
    values: dict[str, str] = field(default_factory=dict)
    before: list[dict[str, Any]] = field(default_factory=list)
    workers: list[WorkerProcess] = field(default_factory=list)
    op_id: str | None = None
    late: bool = False  # the cancel came after the operation had ended

    @property
    def api(self) -> str:
        return str(self.http.base_url)

    def extra_env(self) -> dict[str, str]:
        s = self.settings
        env = {"SCALEFLOW_NOMAD_POLL_INTERVAL_S": str(s.nomad_poll_interval_s)}
        if s.aws_endpoint_url:
            env["SCALEFLOW_AWS_ENDPOINT_URL"] = s.aws_endpoint_url
        env["SCALEFLOW_NOMAD_ADDRESS"] = s.nomad_address
        return env

    def start_worker(self, hook: dict[str, str] | None = None) -> WorkerProcess:
        w = WorkerProcess(self.settings, extra_env={**self.extra_env(), **(hook or {})})
        w.start()
        self.workers.append(w)
        return w

    def counted(self) -> list[str]:
        try:
            return self.counter.read_text().splitlines()
        except OSError:
            return []

    async def view(self) -> dict[str, Any]:
        resp = await self.http.get(f"/v1/pools/{self.pool}")
        assert resp.status_code == 200, resp.text
        return dict(resp.json())

    async def slot_map(self) -> SlotMap:
        resp = await self.http.get(f"/v1/pools/{self.pool}/slots")
        assert resp.status_code == 200, resp.text
        return SlotMap.model_validate(resp.json())


async def run_case(env: Env, op: Operation, n: int, mode: str) -> Row:
    started = time.monotonic()
    row = Row(op.name, n, mode)
    pool = f"chaos-{op.name}-{uuid.uuid4().hex[:6]}"
    tmp = env.tmp(f"{op.name}-{mode}-{n}")
    over: dict[str, Any] = {"default_pool_name": pool}
    if env.aws is not None and op.nomad:
        over.update(
            aws_endpoint_url=env.aws.endpoint,
            nomad_address=env.aws.nomad_url,
            nomad_poll_interval_s=0.05,
        )
    settings = stack_settings(tmp, env.client, **over)
    try:
        async with running_api(settings, env.client) as http:
            case = Case(env, op, n, mode, row, settings, http, pool, tmp / "activities.log")
            try:
                await asyncio.wait_for(_run(case), timeout=CASE_TIMEOUT_S)
            finally:
                await _retire(case)
    except Exception as exc:  # the row says what broke; the test fails on it
        row.problems.append(f"harness: {type(exc).__name__}: {exc}")
    finally:
        row.seconds = time.monotonic() - started
        leftovers = memcached_pids(settings.state_dir)
        if leftovers:
            LocalProvider(settings).stop_all()
            for pid in memcached_pids(settings.state_dir):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    return row


async def _run(case: Case) -> None:
    await _set_up(case)
    hook = {TEST_COUNTER_ENV: str(case.counter), TEST_WORKFLOW_TYPES_ENV: ",".join(OPERATION_TYPES)}
    if case.mode == "kill":
        hook[TEST_KILL_AFTER_ENV] = str(case.n)
    hooked = case.start_worker(hook)
    case.op_id = await SUBMIT[case.op.name](case)

    if case.mode == "kill":
        await _kill_and_recover(case, hooked)
    elif case.mode == "cancel":
        await _cancel_after(case)
    doc = await _final(case)
    case.row.result = doc["Status"]
    if case.late:
        case.row.result += " (late)"
    elif case.mode == "cancel" and doc["Status"] == "success":
        # Accepted (202), yet the operation went on: the table shows it.
        case.row.result += " (cancel ignored)"
    await _settle(case)
    if case.op.nomad:
        await _check_nomad(case, doc["Status"])
    else:
        await _check_local(case, doc["Status"])
    if case.mode == "none":
        case.row.activities = await completed_activities(case.env.client, case.op_id)
        counted = [line.split()[1] for line in case.counted()]
        if sorted(counted) != sorted(case.row.activities):
            case.row.problems.append(
                f"the hook counted {counted}, the history holds {case.row.activities}"
            )


# ---- setting a pool up ---------------------------------------------------------------------


async def _set_up(case: Case) -> None:
    """The pool at its starting size (and keys in it), made by an in-process worker."""
    async with build_worker(case.env.client, case.settings):
        if case.op.nomad:
            await _set_up_nomad(case)
        else:
            await _put_policy(case, MinCount=case.op.nodes, MaxCount=8, Provider="local")
            await _wait_nodes(case, case.op.nodes)
            # Room to scale in by one.
            await _put_policy(case, MinCount=1, MaxCount=8, Provider="local")
        if case.op.keys:
            case.values = keyset(case.op.keys)
            await asyncio.to_thread(write_all, case.api, case.pool, case.values)
        case.before = (await case.view())["nodes"]


async def _set_up_nomad(case: Case) -> None:
    aws = case.env.aws
    assert aws is not None
    case.asg = await asyncio.to_thread(aws.make_asg, desired=2, min_size=0, max_size=4)
    busy, idle = await asyncio.to_thread(aws.instances, case.asg)
    case.nomad_nodes = {
        busy: aws.nomad.add_node(NOMAD_CLASS, busy),
        idle: aws.nomad.add_node(NOMAD_CLASS, idle),
    }
    for _ in range(3):
        aws.nomad.add_alloc(case.nomad_nodes[busy], cpu_shares=1000)
    # Many small allocations: the double stops one per read, so the drain lasts long
    # enough (about a second) for a cancel to land in it.
    for _ in range(NOMAD_IDLE_ALLOCS):
        aws.nomad.add_alloc(case.nomad_nodes[idle], cpu_shares=5)
    await _put_policy(
        case,
        MinCount=1,
        MaxCount=3,
        Provider="aws-autoscaling",
        ProviderConfig={"asg-name": case.asg},
        NodeClass=NOMAD_CLASS,
    )
    await _wait_nodes(case, 2)


async def _put_policy(case: Case, **body: Any) -> None:
    resp = await case.http.put(f"/v1/policy/{case.pool}", json=body)
    assert resp.status_code == 200, resp.text


async def _wait_nodes(case: Case, count: int, timeout_s: float = 60) -> None:
    view: dict[str, Any] = {}
    wait = Backoff(timeout_s)
    while not wait.expired():
        view = await case.view()
        ready = [n for n in view["nodes"] if n["state"] == "ready"]
        if not view["queue"] and len(view["nodes"]) == count == len(ready):
            return
        await wait.sleep()
    raise AssertionError(f"pool never reached {count} ready nodes: {view}")


# ---- starting an operation -----------------------------------------------------------------


async def _chemtrail(case: Case, direction: str) -> str:
    resp = await case.http.post(f"/v1/scale/{direction}/{case.pool}")
    assert resp.status_code == 201, resp.text
    return str(resp.json()["ID"])


async def _rollout(case: Case) -> str:
    body = {"capacity": 32, "replacement_policy": "lru"}
    resp = await case.http.post("/api/manager/config", json=body)
    assert resp.status_code == 200, resp.text
    return str(resp.json()["content"]["ID"])


async def _clear(case: Case) -> str:
    resp = await case.http.delete("/api/manager/cache/clear")
    assert resp.status_code == 200, resp.text
    return str(resp.json()["content"]["ID"])


SUBMIT: dict[str, Callable[[Case], Awaitable[str]]] = {
    "scale-out": lambda c: _chemtrail(c, "out"),
    "scale-in": lambda c: _chemtrail(c, "in"),
    "scale-in-nomad": lambda c: _chemtrail(c, "in"),
    "migration": lambda c: _chemtrail(c, "out"),
    "rollout": _rollout,
    "data-clear": _clear,
}


# ---- faults ---------------------------------------------------------------------------------


async def _kill_and_recover(case: Case, hooked: WorkerProcess) -> None:
    assert hooked.proc is not None and case.op_id is not None
    deadline = time.monotonic() + 90
    polls = 0
    while hooked.proc.poll() is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"the worker was never killed; counted {case.counted()}")
        polls += 1
        if polls % 25 == 0 and await _status(case) in TERMINAL:
            raise AssertionError(f"the operation ended before activity {case.n}")
        await asyncio.sleep(0.02)
    if hooked.proc.returncode != -9:
        raise AssertionError(f"the hooked worker exited {hooked.proc.returncode}, not by SIGKILL")
    if not NATURAL_TIMEOUTS:
        await release_dead_worker(case.env.client, hooked.proc.pid, await _workflows(case))
    case.start_worker()


async def _cancel_after(case: Case) -> None:
    deadline = time.monotonic() + 90
    while len(case.counted()) < case.n:
        if time.monotonic() > deadline:
            raise AssertionError(f"only {len(case.counted())} activities ever completed")
        await asyncio.sleep(0.005)
    resp = await case.http.delete(f"/v1/scale/status/{case.op_id}")
    if resp.status_code == 409:
        case.late = True  # it had already finished: then it must simply have succeeded
    elif resp.status_code != 202:
        raise AssertionError(f"cancel answered {resp.status_code}: {resp.text}")


async def release_dead_worker(client: Client, pid: int, workflow_ids: list[str]) -> None:
    """Do at once what the server does when the dead worker's timeouts expire."""
    svc = client.workflow_service
    ns = client.namespace
    dead = f"{pid}@{socket.gethostname()}"
    for wid in workflow_ids:
        with contextlib.suppress(RPCError):
            await svc.reset_sticky_task_queue(
                ResetStickyTaskQueueRequest(
                    namespace=ns, execution=WorkflowExecution(workflow_id=wid)
                )
            )
        try:
            desc = await client.get_workflow_handle(wid).describe()
        except RPCError:
            continue
        for pending in desc.raw_description.pending_activities:
            if pending.state != PendingActivityState.PENDING_ACTIVITY_STATE_STARTED:
                continue
            if pending.last_worker_identity != dead:
                continue
            with contextlib.suppress(RPCError):  # it may have just timed out by itself
                await svc.respond_activity_task_failed_by_id(
                    RespondActivityTaskFailedByIdRequest(
                        namespace=ns,
                        workflow_id=wid,
                        run_id=desc.run_id,
                        activity_id=pending.activity_id,
                        failure=Failure(
                            message=f"worker {dead} was killed (chaos harness)",
                            application_failure_info=ApplicationFailureInfo(type="WorkerKilled"),
                        ),
                        identity="chaos-harness",
                        last_heartbeat_details=pending.heartbeat_details,
                    )
                )


async def _workflows(case: Case) -> list[str]:
    assert case.op_id is not None
    return [f"pool/{case.pool}", case.op_id, *await child_ids(case.env.client, case.op_id)]


# ---- reading histories ----------------------------------------------------------------------


async def child_ids(client: Client, workflow_id: str) -> list[str]:
    out: list[str] = []
    async for ev in client.get_workflow_handle(workflow_id).fetch_history_events():
        if ev.event_type == EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_STARTED:
            child = ev.child_workflow_execution_started_event_attributes.workflow_execution
            out += [child.workflow_id, *await child_ids(client, child.workflow_id)]
    return out


async def completed_activities(client: Client, workflow_id: str) -> list[str]:
    """Activity types completed by the workflow and its children ("local" for a
    local activity's marker, whose type the marker does not name plainly)."""
    names: dict[int, str] = {}
    done: list[str] = []
    async for ev in client.get_workflow_handle(workflow_id).fetch_history_events():
        if ev.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            names[ev.event_id] = ev.activity_task_scheduled_event_attributes.activity_type.name
        elif ev.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            done.append(names[ev.activity_task_completed_event_attributes.scheduled_event_id])
        elif (
            ev.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
            and ev.marker_recorded_event_attributes.marker_name == LOCAL_ACTIVITY_MARKER
        ):
            done.append(_local_activity_type(ev.marker_recorded_event_attributes.details))
        elif ev.event_type == EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_STARTED:
            child = ev.child_workflow_execution_started_event_attributes.workflow_execution
            done += await completed_activities(client, child.workflow_id)
    return done


def _local_activity_type(details: Any) -> str:
    try:
        data = json.loads(details["data"].payloads[0].data)
        return str(data["activity_type"])
    except (KeyError, IndexError, ValueError, TypeError):
        return "local"


# ---- the outcome ----------------------------------------------------------------------------


async def _status(case: Case) -> str | None:
    resp = await case.http.get(f"/v1/scale/status/{case.op_id}")
    return str(resp.json()["Status"]) if resp.status_code == 200 else None


async def _final(case: Case, timeout_s: float = 150) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    wait = Backoff(timeout_s)
    while not wait.expired():
        resp = await case.http.get(f"/v1/scale/status/{case.op_id}")
        if resp.status_code == 200:
            doc = resp.json()
            if doc["Status"] in TERMINAL:
                return doc
        await wait.sleep()
    raise AssertionError(f"operation did not end within {timeout_s:g}s: {doc.get('Status')}")


async def _settle(case: Case, timeout_s: float = 30) -> None:
    """Until the pool has taken in the operation's end (its queue is empty)."""
    wait = Backoff(timeout_s)
    while not wait.expired():
        view = await case.view()
        if not view["queue"] and view.get("running") is None:
            return
        await wait.sleep()
    case.row.problems.append(f"the pool never settled: {await case.view()}")


def _expected_ids(case: Case, status: str, ids: set[str]) -> tuple[int, str | None]:
    """The node count the outcome calls for, and what is wrong with ``ids``, if anything."""
    before = {n["id"] for n in case.before}
    op = case.op.name
    if status == "cancelled" or (status == "success" and op == "data-clear"):
        extra = ids - before
        if op == "rollout" and extra:
            return len(before) + len(extra), None  # checked against the slots below
        wrong = None if ids == before else f"nodes {sorted(ids)} are not the pool's own"
        return len(before), wrong
    if status != "success":
        return len(before), f"operation {status}"
    if op in ("scale-out", "migration"):
        return len(before) + 1, None if before < ids else "an original node went missing"
    if op in ("scale-in", "scale-in-nomad"):
        return len(before) - 1, None if ids < before else "a node not of the pool remains"
    if op == "rollout":
        return len(before), None if not ids & before else "an old node was not replaced"
    return len(before), None


async def _check_members(case: Case, status: str) -> dict[str, Any]:
    """The pool's members: as many as expected, the right ones, all ready."""
    row = case.row
    view = await case.view()
    ids = {n["id"] for n in view["nodes"]}
    want, wrong = _expected_ids(case, status, ids)
    row.nodes = f"{len(ids)}/{want}"
    if len(ids) != want:
        row.problems.append(f"{len(ids)} nodes, expected {want}")
    if wrong:
        row.problems.append(wrong)
    if case.mode != "cancel" and status != "success":
        row.problems.append(f"operation ended {status}")
    not_ready = [f"{n['id'][:8]} {n['state']}" for n in view["nodes"] if n["state"] != "ready"]
    if not_ready:
        row.problems.append(f"nodes not ready: {not_ready}")
    return view


async def _check_local(case: Case, status: str) -> None:
    row = case.row
    view = await _check_members(case, status)
    ids = {n["id"] for n in view["nodes"]}

    local = LocalProvider(case.settings)
    records = {r.node_id: local.running_pid(r) for r in local.records() if r.pool == case.pool}
    if set(records) != ids:
        row.problems.append(
            f"provider records {sorted(records)} differ from the pool's nodes {sorted(ids)}"
        )
    dead = [node for node, pid in records.items() if pid is None]
    if dead:
        row.problems.append(f"recorded nodes with no process: {dead}")
    pids = memcached_pids(case.settings.state_dir)
    leaked = pids - {p for p in records.values() if p is not None}
    row.leaked = len(leaked)
    if leaked:
        row.problems.append(f"memcached processes of no node: {sorted(leaked)}")

    slots = await case.slot_map()
    try:
        owned_once(slots.model_copy(update={"moving": []}), ids)
    except AssertionError as exc:
        row.problems.append(f"slot map: {str(exc).splitlines()[0]}")
    if slots.moving:
        moves = [f"{m.start}-{m.end} {m.source[:8]}->{m.target[:8]}" for m in slots.moving]
        row.problems.append(f"slot map still shows moves under way: {moves}")
    counts = slots.counts()
    if set(counts) != ids or max(counts.values()) - min(counts.values()) > 1:
        shares = {k[:8]: v for k, v in counts.items()}
        row.problems.append(f"slots not balanced over the nodes: {shares}")

    if not case.values:
        return
    try:
        lost = await asyncio.to_thread(missing, case.api, case.pool, case.values)
    except OSError as exc:  # the client library could not reach a node the map names
        row.keys_lost = "unreadable"
        row.problems.append(f"reading the keys back failed: {exc}")
        return
    if case.op.name == "data-clear" and status == "success":
        left = len(case.values) - len(lost)
        row.keys_lost = "cleared" if left == 0 else f"{left} left"
        if left:
            row.problems.append(f"{left} keys survived the clear")
    elif case.op.name == "data-clear":
        row.keys_lost = f"{len(lost)} (cleared)"
    else:
        row.keys_lost = str(len(lost))
        if lost:
            row.problems.append(f"{len(lost)} keys lost, e.g. {lost[:3]}")


async def _check_nomad(case: Case, status: str) -> None:
    row, aws = case.row, case.env.aws
    assert aws is not None and case.asg is not None
    view = await _check_members(case, status)
    refs = {n["provider_ref"] for n in view["nodes"]}
    group = set(await asyncio.to_thread(aws.instances, case.asg))
    row.leaked = len(group - refs)
    if group != refs:
        row.problems.append(
            f"group instances {sorted(group)} differ from the pool's {sorted(refs)}"
        )
    for instance in set(case.nomad_nodes) - refs:
        state = await asyncio.to_thread(aws.instance_state, instance)
        if state not in ("shutting-down", "terminated"):
            row.problems.append(f"removed instance {instance} is {state}")
        posts = aws.nomad.drain_posts_for(case.nomad_nodes[instance])
        if posts != 1:
            row.problems.append(f"node of {instance} was asked to drain {posts} times")
    for instance in refs & set(case.nomad_nodes):
        node = aws.nomad.nodes[case.nomad_nodes[instance]]
        if node.drain_strategy is not None or node.eligibility != "eligible":
            row.problems.append(
                f"member {instance} is left draining in Nomad "
                f"(eligibility {node.eligibility}, drain {node.drain_strategy is not None})"
            )


async def _retire(case: Case) -> None:
    client = case.env.client
    for wid in ([case.op_id] if case.op_id else []) + [f"pool/{case.pool}"]:
        with contextlib.suppress(Exception):
            await client.get_workflow_handle(wid).terminate("chaos case finished")
    for w in case.workers:
        await asyncio.to_thread(w.stop)


# ---- the matrix -----------------------------------------------------------------------------


async def run_matrix(env: Env, op: Operation, mode: str, ns: Iterable[int]) -> list[Row]:
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(n: int) -> Row:
        async with gate:
            return await run_case(env, op, n, mode)

    return list(await asyncio.gather(*(one(n) for n in ns)))
