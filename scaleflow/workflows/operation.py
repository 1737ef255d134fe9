"""What every operation shares: waiting for its turn, reporting to its pool, and
keeping a slot-partitioned pool's map up to date as its members change."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import TypeVar

from temporalio import workflow
from temporalio.workflow import ChildWorkflowCancellationType, ParentClosePolicy

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
# workflow.patched id: a cancel that an await swallowed is raised at the next step.
HONOUR_CANCEL = "honour-swallowed-cancel"
# workflow.patched id: the migration child is cancelled and waited for, even when the
# cancel comes while it starts; should the operation close anyway, the child is asked to
# cancel (it ends its moves) rather than terminated mid-move.
MIGRATION_WAITED = "migration-child-waited-on-cancel"
# workflow.patched id: a cancel raised in place of terminate_node's result re-runs the
# termination and is honoured at the next step (scale-in, roll-out and compensation alike).
TERMINATE_OUTLASTS_CANCEL = "terminate-outlasts-cancel"

T = TypeVar("T")


class OperationBase:
    """An operation starts at once (so it is visible and cancellable while queued)
    and waits until its pool gives it the turn with a snapshot of the nodes."""

    def __init__(self) -> None:
        self._snapshot: PoolSnapshot | None = None
        self.map = SlotMap()
        self._migrations = 0
        # The ids of the migration children started so far, for the ``migrations`` query.
        self._migration_ids: list[str] = []
        # Compensating, or past the point of no return: a cancel no longer stops the work.
        self._committed = False

    @workflow.signal
    def go(self, snapshot: PoolSnapshot) -> None:
        self._snapshot = snapshot

    @workflow.query
    def migrations(self) -> list[str]:
        """The ids of this operation's slot-migration children, oldest first (one may
        not have started yet: its id is recorded just before the start)."""
        return list(self._migration_ids)

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

    def honour_cancel(self) -> None:
        """Raise the operation's cancel now if an await swallowed it.

        The SDK hands a workflow's cancel to whatever is awaited at that moment. A signal
        already sent, a child, or an activity that is waited out on cancel (provision,
        terminate) then completes, and its await returns its result as if no cancel had come:
        the workflow would go on to the end. So each step on the way forward checks here.
        Inside :meth:`committed` this does nothing."""
        if self._committed or workflow.cancellation_reason() is None:
            return
        if workflow.patched(HONOUR_CANCEL):
            raise asyncio.CancelledError("cancel requested")

    @contextlib.contextmanager
    def committed(self) -> Iterator[None]:
        """Work that a cancel must not cut short: compensation, and the steps past the
        point of no return (a node being terminated)."""
        before, self._committed = self._committed, True
        try:
            yield
        finally:
            self._committed = before

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
        self.honour_cancel()

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
        self.honour_cancel()

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
        arg = MigrationInput(
            pool=inp.pool,
            slot_map=self.map,
            moves=moves,
            limit=inp.config.migration_limit,
            grace_s=2 * inp.config.client_refresh_s,
            purge=purge,
            # Concurrent moves share the pool's cap.
            rate_mb_s=inp.config.migration_rate_mb_s / inp.config.migration_limit,
            notify=[*notify, workflow.info().workflow_id],
        )
        child_id = f"{inp.op_id}-migration-{self._migrations}"
        self._migration_ids.append(child_id)
        result: MigrationResult
        if workflow.patched(MIGRATION_WAITED):
            result = await self._run_migration(arg, child_id)
        else:
            result = await workflow.execute_child_workflow(
                SlotMigrationWorkflow.run, arg, id=child_id
            )
        self.slot_map_changed(result.slot_map)
        self.honour_cancel()

    async def _run_migration(self, arg: MigrationInput, child_id: str) -> MigrationResult:
        """The migration child, run to its end whenever a cancel comes.

        A cancel while the child was starting made the SDK raise at once and let go of it:
        the operation compensated and closed, and its child was terminated mid-move, leaving
        moving ranges towards a node that was gone. So the start runs in a task of its own
        and the cancel reaches the child once it has started; the child finishes the moves
        under way and starts no more, and compensation begins from a settled map."""
        start = asyncio.create_task(
            workflow.start_child_workflow(
                SlotMigrationWorkflow.run,
                arg,
                id=child_id,
                static_summary=(
                    f"move {sum(m.size for m in arg.moves)} slots of pool {arg.pool} "
                    f"in {len(arg.moves)} ranges"
                ),
                cancellation_type=ChildWorkflowCancellationType.WAIT_CANCELLATION_COMPLETED,
                parent_close_policy=ParentClosePolicy.REQUEST_CANCEL,
            )
        )
        cancelled: list[bool] = []
        handle = await _outlast(start, lambda: cancelled.append(True))

        def cancel_child() -> None:
            # Compensation's own moves run to their end: they are what puts things right.
            if not self._committed:
                handle.cancel()

        if cancelled:
            cancel_child()
        return await _outlast(handle, cancel_child)

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
                summary=f"purge slots {mv.start}-{mv.end} on {self.map.addresses[mv.target]}",
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
                summary=f"drain node {node.id} ({max(left, 0):.0f} s to its deadline)",
                **options.long_running(DRAIN_SLICE_S),
            )
            if result.completed or req.deadline_ns == 0:
                return result
            req = req.model_copy(update={"first": False})
            workflow.set_current_details(
                f"draining node {node.id}: {result.remaining} connections left, "
                f"{max(left, 0):.0f} s to the deadline"
            )
            await workflow.sleep(
                min(DRAIN_POLL, timedelta(seconds=max(left, 0.001))),
                summary=f"wait before the next drain reading of node {node.id}",
            )

    async def terminate(self, inp: OperationInput, node: Node) -> None:
        """Terminate ``node``; once begun, a termination is finished whatever comes.

        A cancel that reaches the workflow in the same task as terminate_node's result is
        raised by the SDK in place of that result, though the node may be gone; a caller
        would then skip saying so, or (compensating) leave the nodes after it running.
        Terminating again is harmless (it finds the node gone), and the cancel counts as
        one that an await swallowed: :meth:`honour_cancel` raises it at the next step."""
        try:
            await self._terminate_node(inp, node)
        except asyncio.CancelledError:
            if workflow.cancellation_reason() is None or not workflow.patched(
                TERMINATE_OUTLASTS_CANCEL
            ):
                raise  # not the operation's cancel (an eviction), or a history from before
            await self._terminate_node(inp, node)

    async def _terminate_node(self, inp: OperationInput, node: Node) -> None:
        await workflow.execute_activity(
            "terminate_node",
            TerminateInput(pool=inp.pool, node=node, config=inp.config),
            result_type=ActivityReport,
            summary=f"terminate node {node.id}",
            **options.terminate(),
        )


async def _outlast(task: asyncio.Future[T], on_cancel: Callable[[], None]) -> T:
    """``task``'s result, awaited to its end: a cancel of the workflow calls ``on_cancel``
    instead of abandoning ``task`` (a cancel reaches only the workflow's main task)."""
    while True:
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                return task.result()
            if workflow.cancellation_reason() is None:
                raise  # not the workflow's cancel (an eviction cancels every task)
            on_cancel()
