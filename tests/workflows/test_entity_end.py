"""A pool told to continue as new while an operation runs waits for the operation,
then continues: its loop must not spin (a spin never yields, so the SDK fails every
workflow task as a deadlock and the pool is lost)."""

from __future__ import annotations

import asyncio
import uuid

from temporalio import workflow
from temporalio.client import WithStartWorkflowOperation, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from scaleflow.core.models import (
    NodeChange,
    OperationKind,
    OperationRequest,
    PoolConfig,
    PoolInit,
    PoolView,
    pool_workflow_id,
)
from scaleflow.worker import WORKFLOWS
from scaleflow.workflows.pool import PoolWorkflow
from tests.conftest import time_skipping_env
from tests.workflows.fakes import FakeCloud

# The run whose tasks are told "continue-as-new suggested" (what the server says of a
# long history), so the test need not grow one.
SUGGESTED: dict[str, str] = {}


@workflow.defn(name="PoolWorkflow", sandboxed=False)
class SuggestedPool(PoolWorkflow):
    @workflow.run
    async def run(self, init: PoolInit) -> None:
        await super().run(init)

    def _may_end(self) -> bool:
        told = SUGGESTED.get("run") == workflow.info().run_id
        return told or super()._may_end()


async def settled(pool: WorkflowHandle, nodes: int) -> PoolView:
    view = None
    for _ in range(200):
        view = await asyncio.wait_for(pool.query(PoolWorkflow.view), 10)
        if len(view.nodes) == nodes and not view.queue:
            return view
        await asyncio.sleep(0.05)
    raise AssertionError(f"the pool did not settle at {nodes} nodes: {view}")


async def test_continue_as_new_suggested_mid_operation_waits_for_it() -> None:
    fake = FakeCloud(addressless=True)
    workflows = [SuggestedPool if w is PoolWorkflow else w for w in WORKFLOWS]
    async with (
        await time_skipping_env() as env,
        Worker(
            env.client,
            task_queue="end",
            workflows=workflows,
            activities=fake.activities(),
            workflow_runner=UnsandboxedWorkflowRunner(),
        ),
    ):
        name = f"p{uuid.uuid4().hex[:6]}"
        cfg = PoolConfig(
            name=name,
            engine="none",
            provider="no-op",
            min_count=1,
            max_count=3,
            drain_deadline_s=600,
        )
        start = WithStartWorkflowOperation(
            PoolWorkflow.run,
            PoolInit(config=cfg),
            id=pool_workflow_id(name),
            task_queue="end",
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        )
        await env.client.execute_update_with_start_workflow(
            PoolWorkflow.ensure, start_workflow_operation=start
        )
        pool = await start.workflow_handle()
        await settled(pool, 1)
        out = OperationRequest(kind=OperationKind.SCALE_OUT, request_id="out")
        await pool.execute_update(PoolWorkflow.submit, out)
        view = await settled(pool, 2)

        # A scale-in whose drain does not end until the test lets it.
        fake.drain_forever = True
        scale_in = OperationRequest(kind=OperationKind.SCALE_IN, request_id="in")
        op = (await pool.execute_update(PoolWorkflow.submit, scale_in)).id
        await asyncio.sleep(0.5)
        first_run = (await pool.describe()).run_id
        SUGGESTED["run"] = first_run
        # Any new workflow task now hears the suggestion while the scale-in runs.
        nobody = NodeChange(op_id="none", node=view.nodes[0])  # of no operation: no change
        await pool.signal(PoolWorkflow.node_changed, nobody)
        await asyncio.sleep(2)
        # Answered: the task was not failed as a deadlock.
        running = await asyncio.wait_for(pool.query(PoolWorkflow.view), 10)
        assert running.running == op
        fake.drain_forever = False
        assert (await env.client.get_workflow_handle(op).result()) is not None
        for _ in range(100):
            if (await pool.describe()).run_id != first_run:
                break
            await asyncio.sleep(0.1)
        assert (await pool.describe()).run_id != first_run, "the pool did not continue as new"
        after = await settled(pool, 1)
        assert after.running is None
        await pool.terminate("test finished")
