"""Orchestration of PoolWorkflow and its operations on the time-skipping server."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import CancelledError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from scaleflow.core.models import (
    OperationKind,
    OperationRequest,
    PoolConfig,
    PoolInit,
    PoolView,
    Selector,
    pool_workflow_id,
)
from scaleflow.worker import WORKFLOWS
from scaleflow.workflows.pool import PoolWorkflow
from tests.conftest import time_skipping_env
from tests.workflows.fakes import FakeCloud

# Pools started by a test; ended afterwards, since a pool's timers would otherwise
# hold up time skipping for the tests after it.
STARTED: list[WorkflowHandle] = []


async def retire_pools() -> None:
    while STARTED:
        with contextlib.suppress(Exception):
            await STARTED.pop().terminate("test finished")


@pytest.fixture
async def cloud(time_env: WorkflowEnvironment) -> AsyncIterator[tuple[FakeCloud, str]]:
    fake = FakeCloud()
    queue = f"q-{uuid.uuid4()}"
    async with Worker(
        time_env.client, task_queue=queue, workflows=WORKFLOWS, activities=fake.activities()
    ):
        yield fake, queue
        await retire_pools()


async def start_pool(client: Client, queue: str, **cfg: object) -> WorkflowHandle:
    name = f"p{uuid.uuid4().hex[:8]}"
    # No clients poll these pools' maps, so migrations need no grace period.
    config = PoolConfig(name=name, **{"client_refresh_s": 0, **cfg})  # type: ignore[arg-type]
    op = WithStartWorkflowOperation(
        PoolWorkflow.run,
        PoolInit(config=config),
        id=pool_workflow_id(name),
        task_queue=queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )
    await client.execute_update_with_start_workflow(
        PoolWorkflow.ensure, start_workflow_operation=op
    )
    handle = await op.workflow_handle()
    STARTED.append(handle)
    return handle


async def submit(handle: WorkflowHandle, kind: OperationKind, rid: str | None = None) -> str:
    req = OperationRequest(kind=kind, request_id=rid or str(uuid.uuid4()))
    accepted = await handle.execute_update(PoolWorkflow.submit, req)
    return accepted.id


async def settle(handle: WorkflowHandle, client: Client, nodes: int) -> PoolView:
    """The pool's view once its queue is empty and it holds ``nodes`` nodes."""
    view = None
    for _ in range(200):
        view = await handle.query(PoolWorkflow.view)
        if not view.queue and len(view.nodes) == nodes:
            return view
        await asyncio.sleep(0.05)
    raise AssertionError(f"pool did not settle at {nodes} nodes: {view}")


async def test_pool_tops_up_to_min_and_scales_out_and_in(time_env, cloud) -> None:
    fake, queue = cloud
    client = time_env.client
    pool = await start_pool(client, queue, min_count=1, max_count=3, provider="no-op")
    view = await settle(pool, client, 1)

    op = await submit(pool, OperationKind.SCALE_OUT)
    await client.get_workflow_handle(op).result()
    view = await settle(pool, client, 2)
    assert all(n.state == "ready" for n in view.nodes)

    op = await submit(pool, OperationKind.SCALE_IN)
    await client.get_workflow_handle(op).result()
    view = await settle(pool, client, 1)
    assert fake.terminated and fake.terminated[0] not in {n.id for n in view.nodes}


async def test_least_busy_selector_and_five_minute_drain_skips_time(time_env, cloud) -> None:
    fake, queue = cloud
    client = time_env.client
    fake.drain_forever = True
    pool = await start_pool(client, queue, min_count=0, max_count=3, provider="no-op")
    for _ in range(2):
        await client.get_workflow_handle(await submit(pool, OperationKind.SCALE_OUT)).result()
    view = await settle(pool, client, 2)
    busy, idle = view.nodes[0].id, view.nodes[1].id
    fake.load = {busy: 5.0, idle: 0.0}
    op = await submit(pool, OperationKind.SCALE_IN)
    # Results of handles got by id do not unlock skipping on this server: skip explicitly.
    await time_env.sleep(timedelta(minutes=6))
    await client.get_workflow_handle(op).result()
    assert fake.terminated[-1] == idle
    # The 5-minute deadline passed in workflow time; then one final reading was taken.
    # Slices until the 5-minute deadline passed in workflow time, then a final reading.
    assert len(fake.drains) > 10
    assert [d.deadline_ns == 0 for d in fake.drains].index(True) == len(fake.drains) - 1
    assert sum(d.first for d in fake.drains) == 1


async def test_newest_selector(time_env, cloud) -> None:
    fake, queue = cloud
    client = time_env.client
    pool = await start_pool(
        client, queue, min_count=0, max_count=3, provider="no-op", selector=Selector.NEWEST
    )
    for _ in range(2):
        await client.get_workflow_handle(await submit(pool, OperationKind.SCALE_OUT)).result()
    await client.get_workflow_handle(await submit(pool, OperationKind.SCALE_IN)).result()
    assert fake.terminated == [fake.provisioned[-1]]


async def test_bounds_and_dedupe(time_env, cloud) -> None:
    _fake, queue = cloud
    client = time_env.client
    pool = await start_pool(client, queue, min_count=1, max_count=2, provider="no-op")
    await settle(pool, client, 1)
    first = await submit(pool, OperationKind.SCALE_OUT, rid="same")
    again = await submit(pool, OperationKind.SCALE_OUT, rid="same")
    assert first == again
    with pytest.raises(WorkflowUpdateFailedError) as err:
        await submit(pool, OperationKind.SCALE_OUT)
    assert err.value.cause.type == "BoundsCrossed"
    assert "max_count 2" in str(err.value.cause)
    await client.get_workflow_handle(first).result()
    await settle(pool, client, 2)
    await submit(pool, OperationKind.SCALE_IN)
    with pytest.raises(WorkflowUpdateFailedError) as err:
        await submit(pool, OperationKind.SCALE_IN)
    assert err.value.cause.type == "BoundsCrossed"


async def test_failed_scale_out_destroys_the_node_it_made(time_env, cloud) -> None:
    fake, queue = cloud
    client = time_env.client
    pool = await start_pool(client, queue, min_count=0, max_count=3, provider="no-op")
    fake.fail_ready = True
    op = await submit(pool, OperationKind.SCALE_OUT)
    with pytest.raises(WorkflowFailureError):
        await client.get_workflow_handle(op).result()
    await settle(pool, client, 0)
    assert fake.provisioned and fake.terminated == fake.provisioned
    assert fake.alive == {}


async def test_cancelled_scale_out_compensates(time_env, cloud) -> None:
    fake, queue = cloud
    client = time_env.client
    pool = await start_pool(client, queue, min_count=0, max_count=3, provider="no-op")
    fake.ready_delay_s = 2.0
    op = await submit(pool, OperationKind.SCALE_OUT)
    handle = client.get_workflow_handle(op)
    for _ in range(100):
        if fake.provisioned:
            break
        await asyncio.sleep(0.02)
    await handle.cancel()
    with pytest.raises(WorkflowFailureError) as err:
        await handle.result()
    assert isinstance(err.value.cause, CancelledError)
    await settle(pool, client, 0)
    assert fake.terminated == fake.provisioned and fake.alive == {}


async def test_operations_run_one_at_a_time_in_order(time_env, cloud) -> None:
    fake, queue = cloud
    client = time_env.client
    pool = await start_pool(client, queue, min_count=0, max_count=8, provider="no-op")
    ids = await asyncio.gather(*(submit(pool, OperationKind.SCALE_OUT) for _ in range(5)))
    assert len(set(ids)) == 5
    for op in ids:
        await client.get_workflow_handle(op).result()
    await settle(pool, client, 5)
    assert len(fake.provisioned) == 5


async def test_a_failing_top_up_backs_off_and_recovers() -> None:
    # Its own server: skipping time on the shared one would wait on other tests'
    # leftover workflows.
    async with await time_skipping_env() as env:
        fake = FakeCloud(fail_ready=True)
        async with Worker(
            env.client, task_queue="backoff", workflows=WORKFLOWS, activities=fake.activities()
        ):
            pool = await start_pool(
                env.client, "backoff", min_count=1, max_count=3, provider="no-op"
            )
            for _ in range(200):
                if fake.terminated:
                    break
                await asyncio.sleep(0.05)
            assert fake.terminated, "the first top-up failed and was compensated"
            fake.fail_ready = False
            # The pool waits out its backoff on a timer, then tops up again.
            await env.sleep(timedelta(minutes=5))
            await settle(pool, env.client, 1)
            desc = await pool.describe()
            assert desc.status is not None and desc.status.name == "RUNNING"
