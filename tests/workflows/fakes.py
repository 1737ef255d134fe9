"""Activities replaced by name, for tests about orchestration only."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime

from temporalio import activity
from temporalio.exceptions import ApplicationError

from scaleflow.core.activity_io import (
    DrainInput,
    DrainResult,
    ListNodesInput,
    ListNodesResult,
    LoadInput,
    LoadResult,
    ProvisionInput,
    ProvisionResult,
    ReadyInput,
    ReadyResult,
    TerminateInput,
)
from scaleflow.core.migration_io import MigrateInput, MigrateResult, PurgeInput
from scaleflow.core.models import ActivityReport, EventNote, Node, NodeState
from scaleflow.core.stats_io import StatsInput, StatsResult


@dataclass
class FakeCloud:
    """Records what the activities were asked to do."""

    alive: dict[str, Node] = field(default_factory=dict)
    provisioned: list[str] = field(default_factory=list)
    terminated: list[str] = field(default_factory=list)
    drains: list[DrainInput] = field(default_factory=list)
    # Nodes as the real no-op provider makes them: ready at once, with no address
    # (so no slot migration runs).
    addressless: bool = False
    fail_ready: bool = False
    # node_ready fails for good for the nodes provisioned from this index on.
    fail_ready_from: int | None = None
    ready_delay_s: float = 0.0
    drain_forever: bool = False
    load: dict[str, float] = field(default_factory=dict)
    # Miss rates the fake nodes report, one per reading (the last repeats).
    miss_rates: list[float] = field(default_factory=lambda: [0.5])
    readings: int = 0
    stats_seen: list[StatsInput] = field(default_factory=list)
    migrated: list[MigrateInput] = field(default_factory=list)
    purged: list[PurgeInput] = field(default_factory=list)

    def activities(self) -> list[object]:
        cloud = self

        @activity.defn(name="provision_node")
        async def provision_node(req: ProvisionInput) -> ProvisionResult:
            node = cloud.alive.get(req.node_id) or Node(
                id=req.node_id,
                address=None if cloud.addressless else f"fake:{len(cloud.provisioned)}",
                provider_ref=req.node_id,
                state=NodeState.READY if cloud.addressless else NodeState.PROVISIONING,
                created_at=datetime.now(UTC),
            )
            if req.node_id not in cloud.alive:
                cloud.provisioned.append(req.node_id)
            cloud.alive[req.node_id] = node
            return ProvisionResult(node=node, events=[EventNote(message=f"made {req.node_id}")])

        @activity.defn(name="node_ready")
        async def node_ready(req: ReadyInput) -> ReadyResult:
            if cloud.ready_delay_s:
                await asyncio.sleep(cloud.ready_delay_s)
            late = cloud.fail_ready_from is not None and (
                cloud.provisioned.index(req.node.id) >= cloud.fail_ready_from
            )
            if cloud.fail_ready or late:
                raise ApplicationError("node never answered", non_retryable=True)
            return ReadyResult(node=req.node.model_copy(update={"state": NodeState.READY}))

        @activity.defn(name="terminate_node")
        async def terminate_node(req: TerminateInput) -> ActivityReport:
            cloud.terminated.append(req.node.id)
            cloud.alive.pop(req.node.id, None)
            return ActivityReport(events=[EventNote(message=f"removed {req.node.id}")])

        @activity.defn(name="list_pool_nodes")
        async def list_pool_nodes(req: ListNodesInput) -> ListNodesResult:
            return ListNodesResult(nodes=None)

        @activity.defn(name="node_load")
        async def node_load(req: LoadInput) -> LoadResult:
            return LoadResult(load={n.id: cloud.load.get(n.id, 0.0) for n in req.nodes})

        @activity.defn(name="drain_node")
        async def drain_node(req: DrainInput) -> DrainResult:
            cloud.drains.append(req)
            if req.deadline_ns == 0:
                return DrainResult(
                    completed=False, remaining=1, events=[EventNote(message="deadline reached")]
                )
            # Connections that never close: only the workflow's deadline ends the drain.
            return DrainResult(
                completed=not cloud.drain_forever, remaining=int(cloud.drain_forever)
            )

        @activity.defn(name="pool_stats")
        async def pool_stats(req: StatsInput) -> StatsResult:
            rate = cloud.miss_rates[min(cloud.readings, len(cloud.miss_rates) - 1)]
            cloud.readings += 1
            cloud.stats_seen.append(req)
            gets = 10_000
            misses = round(rate * gets)
            return StatsResult(
                counters={}, gets=gets, hits=gets - misses, misses=misses, items=0, bytes=0
            )

        @activity.defn(name="migrate_range")
        async def migrate_range(req: MigrateInput) -> MigrateResult:
            cloud.migrated.append(req)
            note = EventNote(message=f"migrated slots {req.move.label()}: 0 keys")
            return MigrateResult(keys=0, bytes=0, events=[note])

        @activity.defn(name="purge_range")
        async def purge_range(req: PurgeInput) -> ActivityReport:
            cloud.purged.append(req)
            return ActivityReport()

        return [
            provision_node,
            node_ready,
            terminate_node,
            list_pool_nodes,
            node_load,
            drain_node,
            migrate_range,
            purge_range,
            pool_stats,
        ]
