"""A cancel that reaches an operation in the same workflow task as the result of a
``terminate_node`` (a roll-out's old node, a failed scale-out's compensation), on a dev
server (the time-skipping server cannot reset a sticky queue).

The SDK then raises the cancel in place of the activity's result, though the node is
gone: the roll-out used to end "cancelled" without reporting the node terminated, so the
pool kept a "draining" node the provider no longer had (the chaos matrix's ``rollout``
cancel at N=5, on a loaded machine). To land both in one workflow task for sure, the
activity completes asynchronously and no worker runs while the test sends the cancel and
then the result: the next worker's first workflow task carries both.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

import pytest
from temporalio import activity
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType
from temporalio.api.workflowservice.v1 import ResetStickyTaskQueueRequest
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import CancelledError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from scaleflow.core.activity_io import TerminateInput
from scaleflow.core.models import (
    ActivityReport,
    CacheSettings,
    OperationKind,
    OperationRequest,
    PoolView,
)
from scaleflow.worker import WORKFLOWS
from scaleflow.workflows.pool import PoolWorkflow
from tests.workflows.fakes import FakeCloud
from tests.workflows.test_cancel_scale_in import back_to_ready, owned_evenly, replays
from tests.workflows.test_pool import retire_pools, settle, start_pool, submit


@dataclass
class Cloud:
    client: Client
    fake: FakeCloud
    queue: str
    # The first of these nodes (None: of any node) to be terminated has its
    # terminate_node completed by the test (asynchronously).
    held_nodes: set[str] | None = field(default_factory=set)
    # That node and its activity's task token, once the activity has done its work.
    held: asyncio.Future[tuple[str, bytes]] = field(default_factory=asyncio.Future)

    def worker(self) -> AbstractAsyncContextManager[Worker]:
        base = {a.__name__: a for a in self.fake.activities()}

        @activity.defn(name="terminate_node")
        async def terminate_node(req: TerminateInput) -> ActivityReport:
            result: ActivityReport = await base["terminate_node"](req)
            held = self.held_nodes is None or req.node.id in self.held_nodes
            if not held or self.held.done():
                return result
            # The node is gone; the test reports the result when it chooses.
            self.held.set_result((req.node.id, activity.info().task_token))
            activity.raise_complete_async()

        activities = [a for name, a in base.items() if name != "terminate_node"]
        return Worker(
            self.client,
            task_queue=self.queue,
            workflows=WORKFLOWS,
            activities=[*activities, terminate_node],
        )


@pytest.fixture
async def cloud(dev_env: WorkflowEnvironment) -> AsyncIterator[Cloud]:
    yield Cloud(client=dev_env.client, fake=FakeCloud(), queue=f"cancel-ro-{uuid.uuid4()}")
    await retire_pools()


async def pool_of(client: Client, cloud: Cloud, nodes: int) -> tuple[WorkflowHandle, PoolView]:
    # Roll-outs are for local memcached pools; the fakes stand in for the processes.
    pool = await start_pool(client, cloud.queue, min_count=0, max_count=3, provider="local")
    for _ in range(nodes):
        await client.get_workflow_handle(await submit(pool, OperationKind.SCALE_OUT)).result()
    return pool, await settle(pool, client, nodes)


async def unstick(client: Client, *handles: WorkflowHandle) -> None:
    """Send the workflows' next tasks to the shared queue, not to the stopped worker's."""
    for h in handles:
        await client.workflow_service.reset_sticky_task_queue(
            ResetStickyTaskQueueRequest(
                namespace=client.namespace, execution=WorkflowExecution(workflow_id=h.id)
            )
        )


async def landed_together(op: WorkflowHandle) -> bool:
    """Whether the cancel request came in the same workflow task as an activity's result."""
    wanted = {
        EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED,
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED,
    }
    batch: set[EventType.ValueType] = set()
    async for ev in op.fetch_history_events():
        if ev.event_type != EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED:
            batch.add(ev.event_type)
        elif wanted <= batch:
            return True
        else:
            batch = set()
    return False


@pytest.mark.parametrize("nodes", [1, 2])
async def test_a_cancel_with_an_old_nodes_termination_leaves_the_pool_whole(
    dev_env: WorkflowEnvironment, cloud: Cloud, nodes: int
) -> None:
    client = dev_env.client
    req = OperationRequest(
        kind=OperationKind.ROLLOUT,
        request_id=str(uuid.uuid4()),
        cache=CacheSettings(capacity_mb=32, eviction="lru"),
    )
    async with cloud.worker():
        pool, view = await pool_of(client, cloud, nodes)
        before = {n.id for n in view.nodes}
        cloud.held_nodes = set(before)
        op = client.get_workflow_handle((await pool.execute_update(PoolWorkflow.submit, req)).id)
        # The first old node is terminated (its slots are on its replacement); its result
        # is held.
        gone, token = await asyncio.wait_for(cloud.held, 30)
    # No worker: the cancel and the result wait for the same workflow task.
    await unstick(client, op, pool)
    await op.cancel()
    await client.get_async_activity_handle(task_token=token).complete(ActivityReport())

    async with cloud.worker():
        # The cancel came as a step finished: that step is done, and the next one does
        # not start. With none left, the roll-out ends as one whose cancel came too late.
        if nodes == 1:
            await op.result()
        else:
            with pytest.raises(WorkflowFailureError) as err:
                await op.result()
            assert isinstance(err.value.cause, CancelledError), err.value.cause
        assert await landed_together(op), "the cancel and the result came apart"

        view = await back_to_ready(pool, client, nodes)
        ids = {n.id for n in view.nodes}
        (new,) = ids - before
        assert ids == before - {gone} | {new}
        # The new settings are the pool's only if every node has them.
        assert view.config.capacity_mb == (32 if nodes == 1 else 64)
        # The provider, the pool and the slot map agree; no node was destroyed but the one
        # (twice, maybe: its result was lost, so it is terminated again, to no effect).
        assert set(cloud.fake.alive) == ids
        assert set(cloud.fake.terminated) == {gone}
        owned_evenly(await pool.query(PoolWorkflow.slots), ids)
        await replays(client, op.id)


async def test_a_cancel_with_a_compensating_termination_destroys_every_node(
    dev_env: WorkflowEnvironment, cloud: Cloud
) -> None:
    """A scale-out of two nodes fails on the second; as its compensation terminates the
    first, a cancel comes with that result. The compensation must still destroy both."""
    client = dev_env.client
    cloud.held_nodes = None
    cloud.fake.fail_ready_from = 1
    async with cloud.worker():
        pool = await start_pool(
            client, cloud.queue, min_count=0, max_count=3, provider="local", scale_out_count=2
        )
        op = client.get_workflow_handle(await submit(pool, OperationKind.SCALE_OUT))
        first, token = await asyncio.wait_for(cloud.held, 30)
    assert cloud.fake.provisioned[0] == first and len(cloud.fake.provisioned) == 2
    await unstick(client, op, pool)
    await op.cancel()
    await client.get_async_activity_handle(task_token=token).complete(ActivityReport())

    async with cloud.worker():
        with pytest.raises(WorkflowFailureError):
            await op.result()
        assert await landed_together(op), "the cancel and the result came apart"
        await settle(pool, client, 0)
        # Both nodes it made are gone: none left running at the provider.
        assert cloud.fake.alive == {}
        assert set(cloud.fake.terminated) == set(cloud.fake.provisioned)
        await replays(client, op.id)
