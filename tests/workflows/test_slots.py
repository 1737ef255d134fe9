"""Slot maps through scale-out and scale-in, on the time-skipping server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from scaleflow.core.models import OperationKind
from scaleflow.core.slots import SLOTS, SlotMap
from scaleflow.worker import WORKFLOWS
from scaleflow.workflows.pool import PoolWorkflow
from tests.workflows.fakes import FakeCloud
from tests.workflows.test_pool import retire_pools, settle, start_pool, submit


@pytest.fixture
async def cloud(time_env: WorkflowEnvironment) -> AsyncIterator[tuple[FakeCloud, str]]:
    fake = FakeCloud()
    queue = "slots-q"
    async with Worker(
        time_env.client, task_queue=queue, workflows=WORKFLOWS, activities=fake.activities()
    ):
        yield fake, queue
        await retire_pools()


def owned_once(m: SlotMap, members: set[str]) -> None:
    seen = [0] * SLOTS
    for r in m.ranges:
        assert r.node in members
        for s in range(r.start, r.end + 1):
            seen[s] += 1
    assert seen == [1] * SLOTS
    assert m.moving == []
    assert set(m.addresses) == members


async def test_scale_out_and_in_keep_every_slot_owned_once(time_env, cloud) -> None:
    fake, queue = cloud
    client = time_env.client
    pool = await start_pool(client, queue, min_count=1, max_count=4, provider="no-op")
    view = await settle(pool, client, 1)
    first = await pool.query(PoolWorkflow.slots)
    owned_once(first, {view.nodes[0].id})
    assert first.ranges[0].start == 0 and first.ranges[0].end == SLOTS - 1

    await client.get_workflow_handle(await submit(pool, OperationKind.SCALE_OUT)).result()
    view = await settle(pool, client, 2)
    after_out = await pool.query(PoolWorkflow.slots)
    owned_once(after_out, {n.id for n in view.nodes})
    assert sorted(after_out.counts().values()) == [8192, 8192]
    assert after_out.epoch > first.epoch
    assert [(m.move.start, m.move.end) for m in fake.migrated] == [(8192, 16383)]
    assert [p.move.label() for p in fake.purged] == ["8192-16383"]

    await client.get_workflow_handle(await submit(pool, OperationKind.SCALE_OUT)).result()
    view = await settle(pool, client, 3)
    owned_once(await pool.query(PoolWorkflow.slots), {n.id for n in view.nodes})

    fake.migrated.clear()
    fake.purged.clear()
    op = await submit(pool, OperationKind.SCALE_IN)
    await client.get_workflow_handle(op).result()
    view = await settle(pool, client, 2)
    after_in = await pool.query(PoolWorkflow.slots)
    owned_once(after_in, {n.id for n in view.nodes})
    victim = fake.terminated[-1]
    assert {m.move.source for m in fake.migrated} == {victim}
    assert fake.purged == []  # the node is destroyed; nothing to purge
