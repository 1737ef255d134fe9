"""A scale-in cut short (cancelled, or failed) gives the node its slots back, on the
time-skipping server: the stale copies on the node go first, then the keys are
copied back by a migration, and the node is ready again."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from temporalio import activity
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, Worker

from scaleflow.core.activity_io import DrainInput, DrainResult
from scaleflow.core.models import OperationKind, PoolView
from scaleflow.core.slots import SLOTS, SlotMap
from scaleflow.worker import WORKFLOWS
from scaleflow.workflows.pool import PoolWorkflow
from tests.workflows.fakes import FakeCloud
from tests.workflows.test_pool import retire_pools, settle, start_pool, submit


class Logged(list[Any]):
    """A list of a fake's requests that also writes each one, in order, to ``log``."""

    def __init__(self, log: list[str], show: Any) -> None:
        super().__init__()
        self.log = log
        self.show = show

    def append(self, item: Any) -> None:
        self.log.append(self.show(item))
        super().append(item)


@dataclass
class Cloud:
    fake: FakeCloud
    queue: str
    # Copies and purges, in the order the activities ran.
    log: list[str] = field(default_factory=list)
    fail_drain: bool = False


@pytest.fixture
async def cloud(time_env: WorkflowEnvironment) -> AsyncIterator[Cloud]:
    fake = FakeCloud(drain_forever=True)
    c = Cloud(fake=fake, queue=f"cancel-in-{uuid.uuid4()}")
    fake.migrated = Logged(
        c.log, lambda m: f"copy {m.source_address}>{m.target_address} {m.move.label()}"
    )
    fake.purged = Logged(c.log, lambda p: f"purge {p.address} {p.move.label()}")
    fake_drain = next(a for a in fake.activities() if a.__name__ == "drain_node")

    @activity.defn(name="drain_node")
    async def drain_node(req: DrainInput) -> DrainResult:
        result: DrainResult = await fake_drain(req)
        if c.fail_drain:
            raise ApplicationError("the drain agent crashed", non_retryable=True)
        return result

    activities = [a for a in fake.activities() if a.__name__ != "drain_node"]
    async with Worker(
        time_env.client,
        task_queue=c.queue,
        workflows=WORKFLOWS,
        activities=[*activities, drain_node],
    ):
        yield c
        await retire_pools()


async def pool_of(client: Client, cloud: Cloud, nodes: int) -> tuple[WorkflowHandle, PoolView]:
    pool = await start_pool(client, cloud.queue, min_count=0, max_count=3, provider="no-op")
    for _ in range(nodes):
        await client.get_workflow_handle(await submit(pool, OperationKind.SCALE_OUT)).result()
    view = await settle(pool, client, nodes)
    cloud.log.clear()
    return pool, view


async def drain_begun(cloud: Cloud) -> str:
    """The node whose drain has begun (its slots have been moved away by then)."""
    for _ in range(500):
        if cloud.fake.drains:
            return cloud.fake.drains[0].node.id
        await asyncio.sleep(0.02)
    raise AssertionError("no drain began")


async def back_to_ready(pool: WorkflowHandle, client: Client, nodes: int) -> PoolView:
    view = await settle(pool, client, nodes)
    for _ in range(200):
        if all(n.state == "ready" for n in view.nodes):
            return view
        await asyncio.sleep(0.02)
        view = await pool.query(PoolWorkflow.view)
    raise AssertionError(f"nodes not ready again: {view.nodes}")


def owned_evenly(m: SlotMap, nodes: set[str]) -> None:
    seen = [0] * SLOTS
    for r in m.ranges:
        seen[r.start : r.end + 1] = [c + 1 for c in seen[r.start : r.end + 1]]
    assert seen == [1] * SLOTS, "every slot owned exactly once"
    assert m.moving == []
    assert set(m.addresses) == nodes
    counts = m.counts()
    assert set(counts) == nodes
    assert max(counts.values()) - min(counts.values()) <= 1


async def replays(client: Client, workflow_id: str) -> None:
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    replayer = Replayer(workflows=WORKFLOWS, data_converter=pydantic_data_converter)
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None


@pytest.mark.parametrize("ending", ["cancelled", "failed"])
async def test_a_scale_in_cut_short_moves_the_slots_back(
    time_env: WorkflowEnvironment, cloud: Cloud, ending: str
) -> None:
    client = time_env.client
    pool, view = await pool_of(client, cloud, 2)
    before = await pool.query(PoolWorkflow.slots)
    address = {n.id: n.address for n in view.nodes}
    cloud.fail_drain = ending == "failed"
    op = client.get_workflow_handle(await submit(pool, OperationKind.SCALE_IN))
    victim = await drain_begun(cloud)
    if ending == "cancelled":
        await op.cancel()
    with pytest.raises(WorkflowFailureError) as err:
        await op.result()
    if ending == "cancelled":
        assert isinstance(err.value.cause, CancelledError)
    else:
        assert "drain agent crashed" in str(err.value.cause.cause)

    view = await back_to_ready(pool, client, 2)
    assert {n.id for n in view.nodes} == set(address)
    after = await pool.query(PoolWorkflow.slots)
    owned_evenly(after, set(address))
    assert after.owned(victim) == before.owned(victim)
    assert after.epoch > before.epoch
    (stayed,) = set(address) - {victim}
    (span,) = [f"{a}-{b}" for a, b in before.owned(victim)]
    # Away and back: the victim's old copies are deleted before the keys are copied
    # back to it, and the other node's copies after.
    assert cloud.log == [
        f"copy {address[victim]}>{address[stayed]} {span}",
        f"purge {address[victim]} {span}",
        f"copy {address[stayed]}>{address[victim]} {span}",
        f"purge {address[stayed]} {span}",
    ]
    assert cloud.fake.terminated == []
    await replays(client, op.id)


async def test_a_cancelled_scale_in_of_the_last_node_gives_it_every_slot_again(
    time_env: WorkflowEnvironment, cloud: Cloud
) -> None:
    client = time_env.client
    pool, view = await pool_of(client, cloud, 1)
    (node,) = view.nodes
    op = client.get_workflow_handle(await submit(pool, OperationKind.SCALE_IN))
    await drain_begun(cloud)
    assert (await pool.query(PoolWorkflow.slots)).ranges == []
    await op.cancel()
    with pytest.raises(WorkflowFailureError):
        await op.result()
    await back_to_ready(pool, client, 1)
    after = await pool.query(PoolWorkflow.slots)
    owned_evenly(after, {node.id})
    # Its keys never left it and nobody could write elsewhere: nothing to copy.
    assert cloud.log == []
    await replays(client, op.id)
