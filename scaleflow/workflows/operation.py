"""What every operation shares: waiting for its turn, reporting to its pool, and
keeping a slot-partitioned pool's map up to date as its members change."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

from scaleflow.workflows import options
from scaleflow.workflows.migration import MAP_SIGNAL, SlotMigrationWorkflow, publish

with workflow.unsafe.imports_passed_through():
    from scaleflow.core.activity_io import DrainInput, DrainResult, TerminateInput
    from scaleflow.core.migration_io import MigrationInput, MigrationResult, PurgeInput
    from scaleflow.core.models import ActivityReport, Node, NodeChange, OperationInput, PoolSnapshot
    from scaleflow.core.slots import Move, SlotMap, plan

DRAIN_SLICE_S = 30.0
DRAIN_POLL = timedelta(seconds=2)
# workflow.patched id: moves of address-less nodes skip the migration child.
CACHELESS_MOVES = "cacheless-moves"


class OperationBase:
    """An operation starts at once (so it is visible and cancellable while queued)
    and waits until its pool gives it the turn with a snapshot of the nodes."""

    def __init__(self) -> None:
        self._snapshot: PoolSnapshot | None = None
        self.map = SlotMap()
        self._migrations = 0

    @workflow.signal
    def go(self, snapshot: PoolSnapshot) -> None:
        self._snapshot = snapshot

    @workflow.signal(name=MAP_SIGNAL)
    def slot_map_changed(self, slot_map: SlotMap) -> None:
        if slot_map.epoch > self.map.epoch:
            self.map = slot_map

    async def wait_turn(self, inp: OperationInput | None = None) -> PoolSnapshot:
        if inp is not None and inp.snapshot is not None and self._snapshot is None:
            self._snapshot = inp.snapshot  # accepted by an idle pool: no need to wait
        await workflow.wait_condition(lambda: self._snapshot is not None)
        assert self._snapshot is not None
        self.map = self._snapshot.slot_map
        return self._snapshot

    def pool_id(self) -> str | None:
        parent = workflow.info().parent
        return parent.workflow_id if parent else None

    async def report(self, op_id: str, node: Node, slot_map: SlotMap | None = None) -> None:
        if slot_map is not None:
            self.map = slot_map
        pool = self.pool_id()
        if pool is None:
            return  # run on its own (tests, tools): there is no pool to tell
        handle = workflow.get_external_workflow_handle(pool)
        await handle.signal("node_changed", NodeChange(op_id=op_id, node=node, slot_map=slot_map))

    def joined_map(self, members: list[Node]) -> SlotMap | None:
        """The map once ``members`` are in it: every slot to them if there is no map
        yet, else the same ranges with their addresses known (moves come after).
        None when there is nothing to change."""
        addresses = {n.id: n.address or "" for n in members}
        if not members or (self.map.ranges and self.map.knows(addresses)):
            return None
        return self.map.joined(addresses)

    async def set_map(self, slot_map: SlotMap) -> None:
        self.map = slot_map
        pool = self.pool_id()
        await publish(slot_map, [pool] if pool else [])

    async def rebalance(
        self, inp: OperationInput, members: list[Node], purge: bool, stale_targets: bool = False
    ) -> None:
        """Spread the slots evenly over ``members``, moving the fewest.

        ``stale_targets``: members may still hold old copies of the slots they are given
        (they gave them away without a purge); those copies are deleted first."""
        if not members:
            return
        fresh = not self.map.ranges
        joined = self.joined_map(members)
        if joined is not None:
            await self.set_map(joined)
        if fresh:
            return  # a first map is even already
        await self.migrate(inp, plan(self.map, [n.id for n in members]), purge, stale_targets)

    async def migrate(
        self, inp: OperationInput, moves: list[Move], purge: bool, stale_targets: bool = False
    ) -> None:
        """Run ``moves`` as a child ``SlotMigrationWorkflow``; the map follows it."""
        if moves and workflow.patched(CACHELESS_MOVES):
            moves = await self._reassign_cacheless(moves)
        if not moves:
            return
        if stale_targets:
            await self._purge_targets(inp, moves)
        self._migrations += 1
        pool = self.pool_id()
        notify = [pool] if pool else []
        result: MigrationResult = await workflow.execute_child_workflow(
            SlotMigrationWorkflow.run,
            MigrationInput(
                pool=inp.pool,
                slot_map=self.map,
                moves=moves,
                limit=inp.config.migration_limit,
                grace_s=2 * inp.config.client_refresh_s,
                purge=purge,
                # Concurrent moves share the pool's cap.
                rate_mb_s=inp.config.migration_rate_mb_s / inp.config.migration_limit,
                notify=[*notify, workflow.info().workflow_id],
            ),
            id=f"{inp.op_id}-migration-{self._migrations}",
        )
        self.slot_map_changed(result.slot_map)

    async def _purge_targets(self, inp: OperationInput, moves: list[Move]) -> None:
        """Delete what each target still holds of the range it is about to get: the copy
        only ``add``s, so an old copy would shadow newer values and bring deleted keys
        back. No client writes there meanwhile: the target neither owns the range nor
        has it marked moving to it yet."""
        for mv in moves:
            await workflow.execute_activity(
                "purge_range",
                PurgeInput(
                    move=mv,
                    address=self.map.addresses[mv.target],
                    rate_mb_s=inp.config.migration_rate_mb_s,
                ),
                result_type=ActivityReport,
                **options.long_running(600),
            )

    async def _reassign_cacheless(self, moves: list[Move]) -> list[Move]:
        """Moves from or to a node with no address (a ``no-op`` provider's) have no keys
        to copy: their slots change owner in one map update. The rest are returned."""
        addresses = self.map.addresses
        bare = [m for m in moves if not (addresses.get(m.source) and addresses.get(m.target))]
        if bare:
            await self.set_map(self.map.reassigned(bare))
        return [m for m in moves if m not in bare]

    async def add_address(self, node: Node) -> None:
        if self.map.ranges and self.map.addresses.get(node.id) != node.address:
            await self.set_map(self.map.with_addresses({node.id: node.address or ""}))

    async def forget(self, node_ids: list[str]) -> None:
        """Drop nodes that own no slots from the map, so clients let go of them."""
        gone = self.map.idle(node_ids)
        if gone:
            await self.set_map(self.map.without(gone))

    async def drain(self, inp: OperationInput, node: Node) -> DrainResult:
        """Drain in slices until done or until the deadline passes in workflow time.

        Each slice is a short heartbeating activity; between slices the workflow
        sleeps on a timer, so the deadline is durable and skippable in tests.
        """
        deadline = workflow.now() + timedelta(seconds=inp.config.drain_deadline_s)
        req = DrainInput(node=node, config=inp.config, deadline_ns=int(deadline.timestamp() * 1e9))
        while True:
            left = (deadline - workflow.now()).total_seconds()
            if left <= 0:
                # One last reading reports what the deadline left behind.
                req = req.model_copy(update={"deadline_ns": 0})
            else:
                req = req.model_copy(update={"slice_s": min(DRAIN_SLICE_S, left)})
            result = await workflow.execute_activity(
                "drain_node",
                req,
                result_type=DrainResult,
                **options.long_running(DRAIN_SLICE_S),
            )
            if result.completed or req.deadline_ns == 0:
                return result
            req = req.model_copy(update={"first": False})
            await workflow.sleep(min(DRAIN_POLL, timedelta(seconds=max(left, 0.001))))

    async def terminate(self, inp: OperationInput, node: Node) -> None:
        await workflow.execute_activity(
            "terminate_node",
            TerminateInput(pool=inp.pool, node=node, config=inp.config),
            result_type=ActivityReport,
            **options.terminate(),
        )
