"""The broker entity and its operations on the time-skipping server, against a simulated
set of Redis nodes (``test_broker_fakes.FakeRedis``) behind the real activity names.

After each step: every slot owned exactly once and each chunk on two hosts (the planner
tests' ``check_meta``), the simulated nodes as the metadata says, epochs rising. Every
workflow history a test produces (entity and operations) is replayed at its end."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowHistory,
    WorkflowUpdateFailedError,
)
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, Worker

from scaleflow.core.broker.chunks import cluster_info, is_migrating, master_indexes
from scaleflow.core.broker.models import BrokerConfig, BrokerMeta, ScaleOp
from scaleflow.core.events import build_scaling_event
from scaleflow.worker import WORKFLOWS
from scaleflow.workflows.broker import BrokerWorkflow
from scaleflow.workflows.broker.models import (
    AddProxyRequest,
    BrokerConfigRequest,
    BrokerInit,
    BrokerReply,
    ClusterConfigRequest,
    ClusterRequest,
    CreateClusterRequest,
    EpochRequest,
    MigrateMode,
    MigrateRequest,
    NodesRequest,
    ProvisionProxiesRequest,
    ProxyRequest,
    RestoreRequest,
    broker_workflow_id,
)
from tests.core.broker.helpers import check_meta, is_balanced
from tests.polling import Backoff
from tests.workflows.test_broker_fakes import FakeRedis, Gate

HOSTS = [f"127.0.0.{h}" for h in range(2, 6)]


@dataclass
class Broker:
    client: Client
    handle: WorkflowHandle
    world: FakeRedis
    last: BrokerMeta
    queue: str

    async def meta(self) -> BrokerMeta:
        return await self.handle.query(BrokerWorkflow.meta)

    async def update(self, update: object, req: object) -> BrokerReply:
        return await self.handle.execute_update(update, req)  # type: ignore[arg-type]

    async def refused(self, update: object, req: object) -> str:
        """The seed's error code the update was refused with."""
        with pytest.raises(WorkflowUpdateFailedError) as caught:
            await self.update(update, req)
        cause = caught.value.cause
        assert isinstance(cause, ApplicationError), cause
        assert cause.type is not None
        return cause.type

    async def finish(self, reply: BrokerReply) -> None:
        """Wait for the reply's operation, then check the metadata and the nodes."""
        if reply.operation is not None:
            await self.client.get_workflow_handle(reply.operation).result()
        await self.settle()

    async def settle(self) -> BrokerMeta:
        for _ in range(400):
            if not await self.handle.query(BrokerWorkflow.operations):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("operations did not finish")
        meta = await self.meta()
        check_meta(meta)
        self.world.check_matches(meta)
        assert meta.global_epoch >= self.last.global_epoch
        for name, cluster in meta.clusters.items():
            if name in self.last.clusters:
                assert cluster.epoch >= self.last.clusters[name].epoch
        self.last = meta
        return meta

    async def add_proxies(self, per_host: int = 2, hosts: list[str] = HOSTS) -> None:
        for h in hosts:
            for p in range(per_host):
                first, second = f"{h}:{7000 + 2 * p}", f"{h}:{7001 + 2 * p}"
                req = AddProxyRequest(proxy_address=first, nodes=[first, second])
                await self.update(BrokerWorkflow.add_proxy, req)


async def start_broker(client: Client, queue: str, world: FakeRedis, init: BrokerInit) -> Broker:
    op = WithStartWorkflowOperation(
        BrokerWorkflow.run,
        init,
        id=broker_workflow_id(init.name),
        task_queue=queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )
    await client.execute_update_with_start_workflow(
        BrokerWorkflow.ensure, start_workflow_operation=op
    )
    handle = await op.workflow_handle()
    return Broker(client=client, handle=handle, world=world, last=BrokerMeta(), queue=queue)


@pytest.fixture
async def broker(time_env: WorkflowEnvironment) -> AsyncIterator[Broker]:
    world = FakeRedis()
    queue = f"q-{uuid.uuid4()}"
    client = time_env.client
    async with Worker(client, task_queue=queue, workflows=WORKFLOWS, activities=world.activities()):
        b = await start_broker(client, queue, world, BrokerInit(name=f"b{uuid.uuid4().hex[:8]}"))
        try:
            yield b
            await replay_all(client, b.handle)
        finally:
            # An activity still running (held at a gate) keeps this test server from
            # skipping time even after its workflow closed: let it finish first.
            for gate in (world.migrate_gate, world.form_gate):
                if gate is not None:
                    await asyncio.wait_for(gate.release(), 10)
            await retire(client, b.handle)


async def retire(client: Client, entity: WorkflowHandle) -> None:
    """End the entity and every operation it started: a run left open with an activity
    pending would stop the test server from skipping time for the tests after it."""
    ids = [entity.id]
    with contextlib.suppress(Exception):
        ids += await operation_ids(client, entity)
    for workflow_id in ids:
        with contextlib.suppress(Exception):
            await client.get_workflow_handle(workflow_id).terminate("test finished")


async def entity_histories(client: Client, entity: WorkflowHandle) -> list[WorkflowHistory]:
    """Every run of the entity (continue-as-new starts a new one), first to last."""
    out = []
    run_id = entity.first_execution_run_id or entity.result_run_id
    while run_id is not None:
        history = await client.get_workflow_handle(entity.id, run_id=run_id).fetch_history()
        out.append(history)
        run_id = _next_run(history)
    return out


async def operation_ids(client: Client, entity: WorkflowHandle) -> list[str]:
    return [
        ev.child_workflow_execution_started_event_attributes.workflow_execution.workflow_id
        for history in await entity_histories(client, entity)
        for ev in history.events
        if ev.event_type == EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_STARTED
    ]


async def replay_all(client: Client, entity: WorkflowHandle) -> None:
    """The entity's history and every operation it started replay without
    non-determinism."""
    replayer = Replayer(workflows=WORKFLOWS, data_converter=pydantic_data_converter)
    for history in await entity_histories(client, entity):
        await replayer.replay_workflow(history)
    for child in await operation_ids(client, entity):
        await replayer.replay_workflow(await client.get_workflow_handle(child).fetch_history())


def _next_run(history: WorkflowHistory) -> str | None:
    last = history.events[-1]
    if last.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
        return last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
    return None


def proxy_of_master(meta: BrokerMeta, name: str) -> str:
    cluster = meta.clusters[name]
    return cluster.nodes[master_indexes(cluster)[0]].proxy_address


# ---- the whole life of a cluster ---------------------------------------------------------------


async def test_create_grow_expand_shrink_free_failover_balance_delete(broker: Broker) -> None:
    b = broker
    await b.add_proxies()
    assert len((await b.settle()).all_proxies) == 8

    await b.finish(
        await b.update(BrokerWorkflow.create_cluster, CreateClusterRequest(name="c", node_number=4))
    )
    await b.finish(await b.update(BrokerWorkflow.add_nodes, NodesRequest(name="c", count=4)))
    meta = b.last
    assert cluster_info(meta.clusters["c"]).node_number == 8
    assert cluster_info(meta.clusters["c"]).node_number_with_slots == 4

    reply = await b.update(
        BrokerWorkflow.migrate, MigrateRequest(name="c", mode=MigrateMode.EXPAND)
    )
    await b.finish(reply)
    assert is_balanced(b.last.clusters["c"]) and not is_migrating(b.last.clusters["c"])
    moved = [c for c in b.world.calls if c[0] == "migrate"]
    assert moved, "no slot was moved"

    reply = await b.update(
        BrokerWorkflow.migrate, MigrateRequest(name="c", mode=MigrateMode.SHRINK, node_number=4)
    )
    await b.finish(reply)
    assert cluster_info(b.last.clusters["c"]).node_number_with_slots == 4

    # Answered only once the nodes are out of the Redis cluster (undermoon #151).
    reply = await b.update(BrokerWorkflow.delete_free_nodes, ClusterRequest(name="c"))
    assert reply.operation is not None
    meta = await b.settle()
    assert len(meta.clusters["c"].nodes) == 4
    in_use = {a for a, p in meta.all_proxies.items() if p.cluster == "c"}
    assert len(in_use) == 2

    failed = proxy_of_master(meta, "c")
    b.world.kill(*meta.all_proxies[failed].node_addresses)
    await b.finish(await b.update(BrokerWorkflow.failover, ProxyRequest(proxy_address=failed)))
    meta = b.last
    assert failed in meta.failed_proxies
    assert meta.all_proxies[failed].cluster is None
    assert failed not in {n.proxy_address for n in meta.clusters["c"].nodes}

    await b.finish(await b.update(BrokerWorkflow.balance, ClusterRequest(name="c")))
    cluster = b.last.clusters["c"]
    assert master_indexes(cluster) == [0, 2]

    await b.finish(await b.update(BrokerWorkflow.delete_cluster, ClusterRequest(name="c")))
    meta = b.last
    assert not meta.clusters
    assert all(p.cluster is None for p in meta.all_proxies.values())
    assert meta.global_epoch > 10


async def scaling_events(client: Client, op_id: str) -> list[str]:
    """The operation's ``/v1/scale/status`` lines."""
    history = await client.get_workflow_handle(op_id).fetch_history()
    doc = build_scaling_event(history.events, client.data_converter.payload_converter)
    return [e.message for e in doc.events]


# ---- refusals while an operation runs -------------------------------------------------------


async def test_scaling_while_migrating_or_changing_nodes_is_refused(broker: Broker) -> None:
    b = broker
    await b.add_proxies()
    await b.finish(
        await b.update(BrokerWorkflow.create_cluster, CreateClusterRequest(name="c", node_number=4))
    )
    await b.finish(await b.update(BrokerWorkflow.add_nodes, NodesRequest(name="c", count=4)))

    b.world.migrate_gate = Gate()
    expand = await b.update(
        BrokerWorkflow.migrate, MigrateRequest(name="c", mode=MigrateMode.EXPAND)
    )
    ops = await b.handle.query(BrokerWorkflow.operations)
    assert [(o.id, o.state) for o in ops] == [(expand.operation, "running")]
    assert (
        await b.refused(BrokerWorkflow.add_nodes, NodesRequest(name="c", count=4))
        == "MIGRATION_RUNNING"
    )
    shrink = MigrateRequest(name="c", mode=MigrateMode.SHRINK, node_number=4)
    assert await b.refused(BrokerWorkflow.migrate, shrink) == "MIGRATION_RUNNING"
    assert (
        await b.refused(BrokerWorkflow.delete_free_nodes, ClusterRequest(name="c"))
        == "MIGRATION_RUNNING"
    )
    # Not a scaling request: allowed meanwhile.
    await b.update(
        BrokerWorkflow.set_cluster_config,
        ClusterConfigRequest(name="c", fields={"compression_strategy": "allow_all"}),
    )
    b.world.migrate_gate.open.set()
    await b.finish(expand)
    lines = await scaling_events(b.client, expand.operation or "")
    assert any(
        line.startswith("migrated slots ") and " keys from 127.0.0." in line for line in lines
    ), lines

    b.world.form_gate = Gate()
    grow = await b.update(BrokerWorkflow.add_nodes, NodesRequest(name="c", count=4))
    code = await b.refused(BrokerWorkflow.add_nodes, NodesRequest(name="c", count=4))
    assert code == "NODE_NUMBER_CHANGING"
    expand_req = MigrateRequest(name="c", mode=MigrateMode.EXPAND)
    assert await b.refused(BrokerWorkflow.migrate, expand_req) == "NODE_NUMBER_CHANGING"
    # Idempotent growth answers by the node count, even while the first one runs.
    enough = NodesRequest(name="c", count=12)
    assert await b.refused(BrokerWorkflow.add_nodes_if_needed, enough) == "NODE_NUM_ALREADY_ENOUGH"
    b.world.form_gate.open.set()
    await b.finish(grow)
    assert len(b.last.clusters["c"].nodes) == 12


async def test_bad_requests_get_the_seed_codes(broker: Broker) -> None:
    b = broker
    await b.add_proxies(per_host=1, hosts=HOSTS[:2])
    create = BrokerWorkflow.create_cluster
    assert (
        await b.refused(create, CreateClusterRequest(name="bad name", node_number=4))
        == "INVALID_CLUSTER_NAME"
    )
    assert (
        await b.refused(create, CreateClusterRequest(name="c", node_number=6))
        == "INVALID_NODE_NUMBER"
    )
    assert (
        await b.refused(create, CreateClusterRequest(name="c", node_number=8))
        == "NO_AVAILABLE_RESOURCE"
    )
    await b.finish(await b.update(create, CreateClusterRequest(name="c", node_number=4)))
    assert (
        await b.refused(create, CreateClusterRequest(name="c", node_number=4)) == "ALREADY_EXISTED"
    )
    assert (
        await b.refused(BrokerWorkflow.delete_cluster, ClusterRequest(name="x"))
        == "CLUSTER_NOT_FOUND"
    )
    assert (
        await b.refused(BrokerWorkflow.delete_free_nodes, ClusterRequest(name="c"))
        == "FREE_NODE_NOT_FOUND"
    )
    expand = MigrateRequest(name="c", mode=MigrateMode.EXPAND)
    assert await b.refused(BrokerWorkflow.migrate, expand) == "FREE_NODE_NOT_FOUND"
    in_use = next(iter(b.last.all_proxies))
    assert (
        await b.refused(BrokerWorkflow.remove_proxy, ProxyRequest(proxy_address=in_use)) == "IN_USE"
    )
    assert (
        await b.refused(BrokerWorkflow.bump_epoch, EpochRequest(epoch=1))
        == "EPOCH_SMALLER_THAN_CURRENT"
    )
    bad = ClusterConfigRequest(name="c", fields={"compression_strategy": "zip"})
    with pytest.raises(WorkflowUpdateFailedError) as caught:
        await b.update(BrokerWorkflow.set_cluster_config, bad)
    cause = caught.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "INVALID_CONFIG"
    assert cause.details == ({"key": "compression_strategy", "value": "zip"},)
    old = b.last.model_copy(update={"version": "other"})
    assert (
        await b.refused(BrokerWorkflow.restore_meta, RestoreRequest(meta=old))
        == "INVALID_META_VERSION"
    )
    epoch = (await b.update(BrokerWorkflow.bump_epoch, EpochRequest(epoch=100))).epoch
    assert epoch == 100 and (await b.meta()).clusters["c"].epoch == 100


# ---- auto scaling ------------------------------------------------------------------------


async def test_auto_scale_out_then_down(broker: Broker) -> None:
    b = broker
    await b.add_proxies()
    await b.finish(
        await b.update(BrokerWorkflow.create_cluster, CreateClusterRequest(name="c", node_number=4))
    )

    out = await b.update(
        BrokerWorkflow.migrate, MigrateRequest(name="c", mode=MigrateMode.AUTO, node_number=8)
    )
    assert out.scale_op == ScaleOp.SCALE_OUT
    # Answered once the new nodes are up and the expand is planned, as undermoon does.
    assert is_migrating((await b.meta()).clusters["c"]) or not (
        await b.handle.query(BrokerWorkflow.operations)
    )
    await b.finish(out)
    assert len(b.last.clusters["c"].nodes) == 8 and is_balanced(b.last.clusters["c"])
    lines = await scaling_events(b.client, out.operation or "")
    assert any(line.startswith("cluster of 8 nodes") for line in lines)
    assert any(line.startswith("migrated slots") for line in lines)

    down = await b.update(
        BrokerWorkflow.migrate, MigrateRequest(name="c", mode=MigrateMode.AUTO, node_number=4)
    )
    assert down.scale_op == ScaleOp.SCALE_DOWN
    await b.finish(down)
    info = cluster_info(b.last.clusters["c"])
    assert (info.node_number, info.node_number_with_slots) == (8, 4)

    # The free nodes are dropped by the next auto request too, and reset before reuse.
    again = await b.update(
        BrokerWorkflow.migrate, MigrateRequest(name="c", mode=MigrateMode.AUTO, node_number=4)
    )
    assert again.scale_op == ScaleOp.NOOP
    await b.finish(again)
    assert len(b.last.clusters["c"].nodes) == 4
    assert not (await b.handle.query(BrokerWorkflow.operations))


# ---- failures ----------------------------------------------------------------------------


async def wait_for(what: str, check: Callable[[], Awaitable[bool]], tries: int = 600) -> None:
    """Until ``check()``, for up to ``tries`` x 50 ms; the checks back off (each is a
    query on the broker's whole state)."""
    wait = Backoff(tries * 0.05)
    while True:
        if await check():
            return
        if wait.expired():
            raise AssertionError(f"timed out waiting: {what}")
        await wait.sleep()


async def test_failure_detection_starts_a_failover(broker: Broker) -> None:
    b = broker
    await b.add_proxies()
    await b.finish(
        await b.update(BrokerWorkflow.create_cluster, CreateClusterRequest(name="c", node_number=8))
    )
    victim = proxy_of_master(b.last, "c")
    b.world.kill(*b.last.all_proxies[victim].node_addresses)

    async def replaced() -> bool:
        meta = await b.meta()
        return victim in meta.failed_proxies and meta.all_proxies[victim].cluster is None

    await wait_for("the failed proxy to be replaced", replaced)
    meta = await b.settle()
    assert victim in meta.failures  # its reports stay until the TTL ends
    history = await b.handle.fetch_history()
    markers = [e for e in history.events if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED]
    assert markers, "the pings ran as local activities"
    ops = [
        ev.child_workflow_execution_started_event_attributes.workflow_execution.workflow_id
        for ev in history.events
        if ev.event_type == EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_STARTED
    ]
    lines = await scaling_events(b.client, ops[-1])
    assert any(
        f"took over from {b.last.all_proxies[victim].node_addresses[0]}" in ln for ln in lines
    ), lines


async def test_no_automatic_failover_when_turned_off(broker: Broker) -> None:
    b = broker
    await b.add_proxies()
    config = BrokerConfig(auto_failover=False)
    await b.update(BrokerWorkflow.set_broker_config, BrokerConfigRequest(config=config))
    assert await b.handle.query(BrokerWorkflow.broker_config) == config
    await b.finish(
        await b.update(BrokerWorkflow.create_cluster, CreateClusterRequest(name="c", node_number=4))
    )
    victim = proxy_of_master(b.last, "c")
    b.world.kill(*b.last.all_proxies[victim].node_addresses)

    async def reported() -> bool:
        return victim in (await b.meta()).failures

    await wait_for("a failure report", reported)
    await asyncio.sleep(1.5)
    meta = await b.meta()
    assert not meta.failed_proxies and not await b.handle.query(BrokerWorkflow.operations)


async def test_failover_during_a_migration_keeps_every_slot(broker: Broker) -> None:
    b = broker
    await b.add_proxies(per_host=3)
    await b.finish(
        await b.update(BrokerWorkflow.create_cluster, CreateClusterRequest(name="c", node_number=4))
    )
    await b.finish(await b.update(BrokerWorkflow.add_nodes, NodesRequest(name="c", count=4)))
    b.world.migrate_gate = Gate()
    expand = await b.update(
        BrokerWorkflow.migrate, MigrateRequest(name="c", mode=MigrateMode.EXPAND)
    )
    await wait_for(
        "a move to start", lambda: _true(b.world.migrate_gate and b.world.migrate_gate.entered)
    )
    # The source of the first move dies while it runs: the failover re-plans the move
    # from the promoted replica, and the operation runs it in its new form.
    meta = await b.meta()
    source = meta.clusters["c"].nodes[master_indexes(meta.clusters["c"])[0]]
    b.world.kill(*meta.all_proxies[source.proxy_address].node_addresses)

    async def replaced() -> bool:
        return source.proxy_address in (await b.meta()).failed_proxies

    await wait_for("the failover", replaced)
    b.world.migrate_gate.open.set()
    await b.finish(expand)
    cluster = b.last.clusters["c"]
    assert is_balanced(cluster) and not is_migrating(cluster)
    assert source.proxy_address not in {n.proxy_address for n in cluster.nodes}


async def _true(value: object) -> bool:
    return bool(value)


# ---- local proxies -------------------------------------------------------------------------


async def test_local_proxies_are_provisioned_used_and_destroyed(broker: Broker) -> None:
    b = broker
    req = ProvisionProxiesRequest(hosts=["127.0.0.2", "127.0.0.3"], per_host=2)
    reply = await b.update(BrokerWorkflow.provision_proxies, req)
    assert len(reply.proxies) == 4
    meta = await b.settle()
    assert sorted(meta.all_proxies) == sorted(reply.proxies)

    await b.finish(
        await b.update(BrokerWorkflow.create_cluster, CreateClusterRequest(name="c", node_number=4))
    )
    provisioned = [c for c in b.world.calls if c[0] == "provision"]
    assert len(provisioned) == 4 + 2  # made, then found running when the cluster took them

    free = next(a for a, p in b.last.all_proxies.items() if p.cluster is None)
    removed = await b.update(BrokerWorkflow.remove_proxy, ProxyRequest(proxy_address=free))
    await b.finish(removed)
    assert free not in b.last.all_proxies and len(b.world.destroyed) == 1


# ---- a burst of concurrent updates --------------------------------------------------------


async def test_a_burst_of_fifty_updates_gets_exact_answers(broker: Broker) -> None:
    """8 proxies on 4 hosts make 4 chunks: of 45 creates of different clusters exactly 4
    succeed; 5 copies of one request (one request id) all get its one answer."""
    b = broker
    await b.add_proxies()
    reqs = [CreateClusterRequest(name=f"c{i}", node_number=4) for i in range(45)]
    reqs += [CreateClusterRequest(name="same", node_number=4, request_id="r-same")] * 5

    async def send(req: CreateClusterRequest) -> BrokerReply | str:
        try:
            return await b.update(BrokerWorkflow.create_cluster, req)
        except WorkflowUpdateFailedError as err:
            assert isinstance(err.cause, ApplicationError)
            return str(err.cause.type)

    answers = await asyncio.gather(*(send(r) for r in reqs))
    created = [a for a in answers[:45] if isinstance(a, BrokerReply)]
    same = answers[45:]
    assert all(a == same[0] for a in same), same
    won = len(created) + isinstance(same[0], BrokerReply)
    assert won == 4, answers
    assert {a for a in answers if isinstance(a, str)} <= {"NO_AVAILABLE_RESOURCE"}
    for reply in created + [a for a in same[:1] if isinstance(a, BrokerReply)]:
        await b.finish(reply)
    meta = b.last
    assert len(meta.clusters) == 4
    assert all(p.cluster is not None for p in meta.all_proxies.values())
    # Every answer is kept: the epochs of the four creates are distinct and rising.
    epochs = sorted(c.epoch for c in meta.clusters.values())
    assert len(set(epochs)) == 4


async def test_a_mixed_burst_while_operations_close(broker: Broker) -> None:
    """Concurrent growth of two clusters and epoch bumps, while operations run and close:
    cluster a grows once (the rest see its node number changing), cluster z is still
    being created (all refused), every bump is applied."""
    b = broker
    await b.add_proxies(per_host=3)
    create = BrokerWorkflow.create_cluster
    await b.finish(await b.update(create, CreateClusterRequest(name="a", node_number=4)))
    b.world.form_gate = Gate()
    made = await b.update(create, CreateClusterRequest(name="z", node_number=4))
    before = (await b.meta()).global_epoch
    reqs: list[tuple[object, object]] = []
    for i in range(50):
        if i % 5 == 4:
            reqs.append((BrokerWorkflow.bump_epoch, EpochRequest()))
        else:
            name = "a" if i % 2 else "z"
            reqs.append((BrokerWorkflow.add_nodes, NodesRequest(name=name, count=4)))

    async def send(update: object, req: object) -> BrokerReply | str:
        if isinstance(req, EpochRequest):
            b.world.form_gate.open.set()  # the create closes during the burst
        try:
            return await b.update(update, req)
        except WorkflowUpdateFailedError as err:
            assert isinstance(err.cause, ApplicationError)
            return str(err.cause.type)

    answers = await asyncio.gather(*(send(u, r) for u, r in reqs))
    by_cluster: dict[str, list[BrokerReply | str]] = {"a": [], "z": []}
    for (_, req), answer in zip(reqs, answers, strict=True):
        if isinstance(req, NodesRequest):
            by_cluster[req.name].append(answer)
    grown = [x for x in by_cluster["a"] if isinstance(x, BrokerReply)]
    assert len(grown) == 1, by_cluster["a"]
    refused = {x for xs in by_cluster.values() for x in xs if isinstance(x, str)}
    assert refused == {"NODE_NUMBER_CHANGING"}, answers
    assert sum(isinstance(x, BrokerReply) for x in by_cluster["z"]) <= 1
    bumps = [a for (u, _), a in zip(reqs, answers, strict=True) if u is BrokerWorkflow.bump_epoch]
    assert all(isinstance(a, BrokerReply) for a in bumps)
    for reply in [made, *grown, *(x for x in by_cluster["z"] if isinstance(x, BrokerReply))]:
        await b.finish(reply)
    meta = b.last
    assert len(meta.clusters["a"].nodes) == 8
    assert meta.global_epoch >= before + 10 + 1


async def test_continue_as_new_keeps_the_broker(broker: Broker) -> None:
    b = await start_broker(
        broker.client,
        broker.queue,
        broker.world,
        BrokerInit(name=f"b{uuid.uuid4().hex[:8]}", ping_interval_s=0.2, ticks_per_run=5),
    )
    try:
        await b.add_proxies(per_host=1)
        req = CreateClusterRequest(name="c", node_number=4, request_id="create-c")
        first = await b.update(BrokerWorkflow.create_cluster, req)
        await b.finish(first)

        async def new_run() -> bool:
            desc = await b.client.get_workflow_handle(b.handle.id).describe()
            return desc.run_id != b.handle.first_execution_run_id

        await wait_for("a continue-as-new", new_run)
        meta = await b.settle()
        assert "c" in meta.clusters and len(meta.all_proxies) == 4
        # A repeated request id gets the first answer in the new run too.
        again = await b.update(BrokerWorkflow.create_cluster, req)
        assert again.operation == first.operation
        await replay_all(b.client, b.handle)
    finally:
        await retire(b.client, b.handle)


# ---- failures of operations -------------------------------------------------------------


async def test_delete_cancels_a_running_migration(broker: Broker) -> None:
    b = broker
    await b.add_proxies()
    create = BrokerWorkflow.create_cluster
    await b.finish(await b.update(create, CreateClusterRequest(name="c", node_number=4)))
    await b.finish(await b.update(BrokerWorkflow.add_nodes, NodesRequest(name="c", count=4)))
    b.world.migrate_gate = Gate()
    expand = await b.update(
        BrokerWorkflow.migrate, MigrateRequest(name="c", mode=MigrateMode.EXPAND)
    )
    gate = b.world.migrate_gate
    await wait_for("a move to start", lambda: _true(gate.entered))
    deleted = await b.update(BrokerWorkflow.delete_cluster, ClusterRequest(name="c"))
    with pytest.raises(WorkflowFailureError) as caught:
        await b.client.get_workflow_handle(expand.operation or "").result()
    assert isinstance(caught.value.cause, CancelledError)
    # The cancel did not wait for the attempt under way (TRY_CANCEL): let it end.
    await gate.release()
    await b.finish(deleted)
    assert not b.last.clusters and all(p.cluster is None for p in b.last.all_proxies.values())
    # The name is free again at once; its proxies are reused only once reset.
    await b.finish(await b.update(create, CreateClusterRequest(name="c", node_number=8)))


async def skip_until(
    env: WorkflowEnvironment, what: str, check: Callable[[], Awaitable[bool]], step: float = 5.0
) -> None:
    """Skip workflow time until ``check()``: handles from ``get_workflow_handle`` do not
    skip time on their own while waiting on a result."""
    for _ in range(200):
        if await check():
            return
        try:
            await env.sleep(step)
        except RPCError as exc:
            # While activities run, the server skips no time: on a loaded machine a
            # sleep then outlasts the call's own timeout. The next round checks again.
            if exc.status != RPCStatusCode.CANCELLED:
                raise
    raise AssertionError(f"timed out waiting: {what}")


async def closed(client: Client, op_id: str) -> WorkflowExecutionStatus | None:
    status = (await client.get_workflow_handle(op_id).describe()).status
    return None if status == WorkflowExecutionStatus.RUNNING else status


async def test_a_failed_migration_is_run_again(
    broker: Broker, time_env: WorkflowEnvironment
) -> None:
    b = broker
    await b.add_proxies()
    create = BrokerWorkflow.create_cluster
    await b.finish(await b.update(create, CreateClusterRequest(name="c", node_number=4)))
    await b.finish(await b.update(BrokerWorkflow.add_nodes, NodesRequest(name="c", count=4)))
    # One move at a time: none is under way to be cancelled when the first fails for good
    # (this test server refuses the cancel of an activity that closes at that moment).
    one = ClusterConfigRequest(name="c", fields={"migration_limit": 1})
    await b.update(BrokerWorkflow.set_cluster_config, one)
    b.world.failing_moves = 1000  # every attempt, until the test lets them through
    expand = await b.update(
        BrokerWorkflow.migrate, MigrateRequest(name="c", mode=MigrateMode.EXPAND)
    )
    op = expand.operation or ""

    async def op_failed() -> bool:
        return await closed(b.client, op) == WorkflowExecutionStatus.FAILED

    await skip_until(time_env, "the migration to fail", op_failed)
    assert is_migrating((await b.meta()).clusters["c"])
    # Still migrating: a new scaling request waits for the moves, which are retried.
    code = await b.refused(BrokerWorkflow.add_nodes, NodesRequest(name="c", count=4))
    assert code == "MIGRATION_RUNNING"
    b.world.failing_moves = 0

    async def settled() -> bool:
        return not is_migrating((await b.meta()).clusters["c"])

    await skip_until(time_env, "the retried migration", settled)
    meta = await b.settle()
    assert is_balanced(meta.clusters["c"])


async def test_held_proxies_are_released_after_a_failed_removal(
    broker: Broker, time_env: WorkflowEnvironment
) -> None:
    b = broker
    await b.add_proxies(per_host=1, hosts=HOSTS[:2])  # one chunk's worth
    create = BrokerWorkflow.create_cluster
    await b.finish(await b.update(create, CreateClusterRequest(name="c", node_number=4)))
    b.world.failing_removals = 1000
    deleted = await b.update(BrokerWorkflow.delete_cluster, ClusterRequest(name="c"))
    op = deleted.operation or ""

    async def op_failed() -> bool:
        return await closed(b.client, op) == WorkflowExecutionStatus.FAILED

    await skip_until(time_env, "the reset to fail", op_failed, step=30)
    # Not reset: the proxies stay held, out of every cluster and out of reach.
    meta = await b.meta()
    assert not meta.clusters
    code = await b.refused(create, CreateClusterRequest(name="d", node_number=4))
    assert code == "NO_AVAILABLE_RESOURCE"
    b.world.failing_removals = 0

    async def free() -> bool:
        try:
            reply = await b.update(create, CreateClusterRequest(name="d", node_number=4))
        except WorkflowUpdateFailedError:
            return False
        await b.finish(reply)
        return True

    await skip_until(time_env, "the proxies to be reset and free", free)
