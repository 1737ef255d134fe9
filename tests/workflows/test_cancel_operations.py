"""Cancels that land where the chaos matrix found them mishandled, on the time-skipping
server. A gate in the worker holds an operation's workflow task at one outbound call
(a child's start, a signal to the pool) until the test has sent its cancel, so the cancel
arrives exactly while that call is in flight:

- while the slot migration child is starting: the operation must cancel the child, wait
  for it, and only then compensate (no moving range left towards a destroyed node);
- while a signal to the pool, or a provisioning that is waited out on cancel, is in
  flight: the SDK hands the cancel to that await, which then returns as if nothing had
  come; the operation must still act on it at its next step;
- a roll-out cut short after its slots moved: the old node takes them back and the new
  node is destroyed.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from temporalio import activity, workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import (
    Interceptor,
    SignalExternalWorkflowInput,
    StartChildWorkflowInput,
    UnsandboxedWorkflowRunner,
    Worker,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
    WorkflowOutboundInterceptor,
)

from scaleflow.core.activity_io import DrainInput, DrainResult, ProvisionInput, ProvisionResult
from scaleflow.core.migration_io import MigrateInput, MigrateResult
from scaleflow.core.models import (
    CacheSettings,
    NodeChange,
    NodeState,
    OperationKind,
    OperationRequest,
    PoolView,
)
from scaleflow.core.slots import SLOTS
from scaleflow.worker import WORKFLOWS
from scaleflow.workflows.pool import PoolWorkflow
from tests.workflows.fakes import FakeCloud
from tests.workflows.test_cancel_scale_in import Logged, back_to_ready, owned_evenly, replays
from tests.workflows.test_pool import retire_pools, settle, start_pool, submit

# ---- the gate ------------------------------------------------------------------------


@dataclass
class Gate:
    """Holds the first workflow task that makes a matching outbound call (``call``: "start"
    of a child or "signal" of another workflow) until :meth:`open` is called."""

    call: str = ""
    match: Callable[[Any], bool] = lambda _: False
    reached: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)

    def arm(self, call: str, match: Callable[[Any], bool]) -> None:
        self.call, self.match = call, match

    def hold(self, call: str, arg: Any) -> None:
        if call != self.call or self.reached.is_set() or not self.match(arg):
            return
        self.reached.set()
        # Blocks the workflow task (its thread) before the command is issued.
        self.released.wait(10)

    async def cancel_there(self, handle: WorkflowHandle) -> None:
        """Once the gate holds the task: cancel ``handle``, then let the task go on."""
        try:
            assert await asyncio.to_thread(self.reached.wait, 30), "the gate was never reached"
            await handle.cancel()
        finally:
            self.released.set()


class _GateOutbound(WorkflowOutboundInterceptor):
    def __init__(self, nxt: WorkflowOutboundInterceptor, gate: Gate) -> None:
        super().__init__(nxt)
        self.gate = gate

    async def start_child_workflow(self, input: StartChildWorkflowInput) -> Any:
        self.gate.hold("start", input)
        return await super().start_child_workflow(input)

    async def signal_external_workflow(self, input: SignalExternalWorkflowInput) -> None:
        self.gate.hold("signal", input)
        await super().signal_external_workflow(input)


class GateInterceptor(Interceptor):
    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor]:
        gate = self.gate

        class Inbound(WorkflowInboundInterceptor):
            def init(self, outbound: WorkflowOutboundInterceptor) -> None:
                super().init(_GateOutbound(outbound, gate))

        return Inbound


def in_workflow(kind: str) -> bool:
    return workflow.info().workflow_type == kind


# ---- the cloud --------------------------------------------------------------------------


@dataclass
class Cloud:
    fake: FakeCloud
    queue: str
    gate: Gate
    # Copies and purges, in the order the activities ran.
    log: list[str] = field(default_factory=list)
    fail_drain: bool = False
    # Wall-clock seconds that a copy, or a provisioning, takes.
    copy_s: float = 0.0
    provision_s: float = 0.0
    provisioning: asyncio.Event = field(default_factory=asyncio.Event)


@pytest.fixture
async def cloud(time_env: WorkflowEnvironment) -> AsyncIterator[Cloud]:
    fake = FakeCloud()
    c = Cloud(fake=fake, queue=f"cancel-ops-{uuid.uuid4()}", gate=Gate())
    fake.migrated = Logged(
        c.log, lambda m: f"copy {m.source_address}>{m.target_address} {m.move.label()}"
    )
    fake.purged = Logged(c.log, lambda p: f"purge {p.address} {p.move.label()}")
    base = {a.__name__: a for a in fake.activities()}

    @activity.defn(name="drain_node")
    async def drain_node(req: DrainInput) -> DrainResult:
        result: DrainResult = await base["drain_node"](req)
        if c.fail_drain:
            raise ApplicationError("the drain agent crashed", non_retryable=True)
        return result

    @activity.defn(name="migrate_range")
    async def migrate_range(req: MigrateInput) -> MigrateResult:
        await asyncio.sleep(c.copy_s)
        result: MigrateResult = await base["migrate_range"](req)
        return result

    @activity.defn(name="provision_node")
    async def provision_node(req: ProvisionInput) -> ProvisionResult:
        c.provisioning.set()
        # No heartbeat: a cancel cannot reach it, so the workflow waits it out.
        await asyncio.sleep(c.provision_s)
        result: ProvisionResult = await base["provision_node"](req)
        return result

    replaced = {"drain_node", "migrate_range", "provision_node"}
    activities = [a for name, a in base.items() if name not in replaced]
    async with Worker(
        time_env.client,
        task_queue=c.queue,
        workflows=WORKFLOWS,
        activities=[*activities, drain_node, migrate_range, provision_node],
        interceptors=[GateInterceptor(c.gate)],
        # The gate blocks a workflow task's thread: no sandbox, no deadlock detector.
        workflow_runner=UnsandboxedWorkflowRunner(),
        debug_mode=True,
    ):
        yield c
        c.gate.released.set()
        await retire_pools()


async def pool_of(
    client: Client, cloud: Cloud, nodes: int, **cfg: Any
) -> tuple[WorkflowHandle, PoolView]:
    pool = await start_pool(client, cloud.queue, min_count=0, max_count=3, **cfg)
    for _ in range(nodes):
        await client.get_workflow_handle(await submit(pool, OperationKind.SCALE_OUT)).result()
    view = await settle(pool, client, nodes)
    cloud.log.clear()
    return pool, view


async def cancelled(op: WorkflowHandle) -> None:
    with pytest.raises(WorkflowFailureError) as err:
        await op.result()
    assert isinstance(err.value.cause, CancelledError), err.value.cause


# ---- 1. a cancel while the migration child starts ------------------------------------------


async def test_a_cancel_while_the_migration_starts_waits_for_the_child(
    time_env: WorkflowEnvironment, cloud: Cloud
) -> None:
    client = time_env.client
    pool, view = await pool_of(client, cloud, 1, provider="no-op")
    (old,) = view.nodes
    # The copy takes a while: the child is mid-move when the cancel reaches it.
    cloud.copy_s = 0.3
    cloud.gate.arm(
        "start",
        lambda i: in_workflow("ScaleOutWorkflow") and i.workflow == "SlotMigrationWorkflow",
    )
    op = client.get_workflow_handle(await submit(pool, OperationKind.SCALE_OUT))
    await cloud.gate.cancel_there(op)
    await cancelled(op)
    kinds = [e.event_type for e in (await op.fetch_history()).events]
    # The cancel came while the child's start was pending.
    assert kinds.index(EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED) < kinds.index(
        EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_STARTED
    )

    child = client.get_workflow_handle(f"{op.id}-migration-1")
    done = await child.describe()
    # Waited for, not terminated with its parent half-way through a move.
    assert done.status in (WorkflowExecutionStatus.CANCELED, WorkflowExecutionStatus.COMPLETED)
    assert done.close_time is not None
    assert done.close_time <= (await op.describe()).close_time

    view = await back_to_ready(pool, client, 1)
    assert [n.id for n in view.nodes] == [old.id]
    after = await pool.query(PoolWorkflow.slots)
    owned_evenly(after, {old.id})
    (new,) = set(cloud.fake.provisioned) - {old.id}
    assert cloud.fake.terminated == [new]
    await replays(client, op.id)
    await replays(client, child.id)


# ---- 2. cancels that an await swallowed ---------------------------------------------------------


def reports_draining(i: SignalExternalWorkflowInput) -> bool:
    if not in_workflow("ScaleInWorkflow") or i.signal != "node_changed":
        return False
    change = i.args[0]
    return isinstance(change, NodeChange) and change.node.state == NodeState.DRAINING


async def test_a_cancel_that_lands_on_a_signal_to_the_pool_is_acted_on(
    time_env: WorkflowEnvironment, cloud: Cloud
) -> None:
    client = time_env.client
    pool, view = await pool_of(client, cloud, 2, provider="no-op")
    before = await pool.query(PoolWorkflow.slots)
    cloud.gate.arm("signal", reports_draining)
    op = client.get_workflow_handle(await submit(pool, OperationKind.SCALE_IN))
    await cloud.gate.cancel_there(op)
    await cancelled(op)

    view = await back_to_ready(pool, client, 2)
    assert {n.id for n in view.nodes} == set(before.addresses)
    # Acted on at the next step: nothing moved, drained or terminated.
    assert cloud.log == []
    assert cloud.fake.drains == []
    assert cloud.fake.terminated == []
    after = await pool.query(PoolWorkflow.slots)
    assert after.ranges == before.ranges
    owned_evenly(after, set(before.addresses))
    await replays(client, op.id)


async def test_a_cancel_during_a_provisioning_that_is_waited_out_is_acted_on(
    time_env: WorkflowEnvironment, cloud: Cloud
) -> None:
    client = time_env.client
    pool, view = await pool_of(client, cloud, 1, provider="no-op")
    (old,) = view.nodes
    cloud.provision_s = 0.5
    cloud.provisioning.clear()
    op = client.get_workflow_handle(await submit(pool, OperationKind.SCALE_OUT))
    await asyncio.wait_for(cloud.provisioning.wait(), 30)
    await op.cancel()
    await cancelled(op)

    view = await back_to_ready(pool, client, 1)
    assert [n.id for n in view.nodes] == [old.id]
    (new,) = set(cloud.fake.provisioned) - {old.id}
    assert cloud.fake.terminated == [new]
    assert cloud.log == []
    owned_evenly(await pool.query(PoolWorkflow.slots), {old.id})
    await replays(client, op.id)


def reports_joining(i: SignalExternalWorkflowInput) -> bool:
    return in_workflow("ScaleOutWorkflow") and i.signal == "node_changed"


async def test_a_cancelled_first_scale_out_leaves_no_slot_to_its_destroyed_node(
    time_env: WorkflowEnvironment, cloud: Cloud
) -> None:
    client = time_env.client
    pool, _ = await pool_of(client, cloud, 0, provider="no-op")
    # The node's report carries the pool's first map, which gives it every slot.
    cloud.gate.arm("signal", reports_joining)
    op = client.get_workflow_handle(await submit(pool, OperationKind.SCALE_OUT))
    await cloud.gate.cancel_there(op)
    await cancelled(op)

    await settle(pool, client, 0)
    (new,) = cloud.fake.provisioned
    assert cloud.fake.terminated == [new]
    after = await pool.query(PoolWorkflow.slots)
    assert after.ranges == [] and after.moving == [] and after.addresses == {}
    await replays(client, op.id)


# ---- 3. a roll-out cut short after its slots moved --------------------------------------------


async def drain_begun(cloud: Cloud) -> None:
    for _ in range(500):
        if cloud.fake.drains:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("no drain began")


@pytest.mark.parametrize("ending", ["cancelled", "failed"])
async def test_a_rollout_cut_short_gives_the_old_node_its_slots_back(
    time_env: WorkflowEnvironment, cloud: Cloud, ending: str
) -> None:
    client = time_env.client
    # Roll-outs are for local memcached pools; the fakes stand in for the processes.
    pool, view = await pool_of(client, cloud, 1, provider="local", drain_deadline_s=3600)
    (old,) = view.nodes
    cloud.fake.drain_forever = True
    cloud.fail_drain = ending == "failed"
    req = OperationRequest(
        kind=OperationKind.ROLLOUT,
        request_id=str(uuid.uuid4()),
        cache=CacheSettings(capacity_mb=32, eviction="lru"),
    )
    op = client.get_workflow_handle((await pool.execute_update(PoolWorkflow.submit, req)).id)
    # The drain of the old node begins once every slot has moved to the new node.
    await drain_begun(cloud)
    if ending == "cancelled":
        await op.cancel()
        await cancelled(op)
    else:
        with pytest.raises(WorkflowFailureError) as err:
            await op.result()
        assert "drain agent crashed" in str(err.value.cause.cause)

    view = await back_to_ready(pool, client, 1)
    assert [n.id for n in view.nodes] == [old.id]
    assert view.config.capacity_mb == 64  # the new settings were not applied
    after = await pool.query(PoolWorkflow.slots)
    owned_evenly(after, {old.id})
    assert after.owned(old.id) == [(0, SLOTS - 1)]
    (new,) = set(cloud.fake.provisioned) - {old.id}
    assert cloud.fake.terminated == [new]
    new_address = cloud.fake.migrated[0].target_address
    span = f"0-{SLOTS - 1}"
    # Away and back: the old node's stale copies go before the keys are copied back.
    assert cloud.log == [
        f"copy {old.address}>{new_address} {span}",
        f"purge {old.address} {span}",
        f"copy {new_address}>{old.address} {span}",
    ]
    await replays(client, op.id)
