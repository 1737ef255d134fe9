"""Scale-in: pick a node, drain it within the deadline, deregister, terminate."""

from __future__ import annotations

import asyncio

from temporalio import workflow
from temporalio.exceptions import ApplicationError

from scaleflow.workflows import options
from scaleflow.workflows.operation import OperationBase

with workflow.unsafe.imports_passed_through():
    from scaleflow.core.activity_io import (
        LoadInput,
        LoadResult,
    )
    from scaleflow.core.errors import ErrorKind
    from scaleflow.core.models import (
        CONTROL_SOURCE,
        Engine,
        Node,
        NodeState,
        OperationInput,
        OperationResult,
        Selector,
    )
    from scaleflow.core.selection import candidates, select_node

# workflow.patched id: a drain cut short gives the node its slots (and keys) back.
RESTORE_SLOTS = "scale-in-restores-slots"
# workflow.patched id: a cancel raised in place of terminate's result ends the removal
# as a cancel during terminate does (the node reported gone, the operation goes on).
FINISHES_REMOVAL = "scale-in-finishes-removal"


@workflow.defn
class ScaleInWorkflow(OperationBase):
    @workflow.run
    async def run(self, inp: OperationInput) -> OperationResult:
        snapshot = await self.wait_turn(inp)
        removed: list[str] = []
        named = [n for n in snapshot.nodes if n.id in (inp.nodes or [])]
        for i in range(inp.count):
            node = named[i] if named else await self._pick(inp, snapshot.nodes, set(removed))
            stay = [
                n
                for n in snapshot.nodes
                if n.state == NodeState.READY and n.id not in {node.id, *removed}
            ]
            await self._remove(inp, node, stay)
            removed.append(node.id)
        return OperationResult(removed=removed)

    async def _pick(self, inp: OperationInput, nodes: list[Node], exclude: set[str]) -> Node:
        pool = candidates(nodes, exclude)
        load: dict[str, float] = {}
        if inp.config.selector == Selector.LEAST_BUSY and pool:
            measured = await workflow.execute_activity(
                "node_load",
                LoadInput(nodes=pool, config=inp.config),
                result_type=LoadResult,
                summary=f"measure the load of {len(pool)} nodes",
                **options.quick(),
            )
            load = measured.load
        node = select_node(pool, inp.config.selector, load)
        if node is None:
            raise ApplicationError(
                f"no node of pool {inp.pool} can be removed",
                {"source": CONTROL_SOURCE},
                type=ErrorKind.NO_NODES.value,
                non_retryable=True,
            )
        return node

    async def _remove(self, inp: OperationInput, node: Node, stay: list[Node]) -> None:
        """Drain ``node`` and terminate it. Until its drain has ended, a cancel or a failure
        puts it back in service with its slots; once the drain has ended (its work is gone,
        or its clients are), it is terminated whatever comes."""
        draining = node.model_copy(update={"state": NodeState.DRAINING})
        slotted = inp.config.engine == Engine.MEMCACHED and bool(self.map.ranges)
        try:
            # Clients stop being given the node before the drain waits on them. Inside the
            # try: the signal's await may swallow a cancel, which is then raised here.
            await self.report(inp.op_id, draining)
            if slotted:
                if stay:
                    # Its slots (and keys) move away first; the node is dropped from the
                    # map, so clients close their connections and the drain can end.
                    await self.rebalance(inp, stay, purge=False)
                    await self.forget([node.id])
                else:
                    # The last node (terminate_all): the pool's cache goes with it.
                    await self.set_map(self.map.cleared())
            await self.drain(inp, draining)
        except BaseException:
            with self.committed():
                try:
                    if slotted and workflow.patched(RESTORE_SLOTS):
                        await self._restore(inp, node, stay)
                finally:
                    # Back in service even if not every slot could be moved back: no later
                    # operation would end a node left draining, while a member is rebalanced.
                    ready = node.model_copy(update={"state": NodeState.READY})
                    await self.report(inp.op_id, ready)
            raise
        gone = node.model_copy(update={"state": NodeState.TERMINATED})
        with self.committed():
            try:
                await self.terminate(inp, draining)
            except asyncio.CancelledError:
                # Once termination has begun it is finished: a half-removed node helps nobody.
                # (terminate() does so itself since TERMINATE_OUTLASTS_CANCEL; this replays
                # the histories recorded before it.)
                await self.terminate(inp, draining)
                finished = workflow.cancellation_reason() is not None and workflow.patched(
                    FINISHES_REMOVAL
                )
                if not finished:
                    await self.report(inp.op_id, gone)
                    raise
                # The cancel came with terminate's result (the SDK raises it in place of
                # the result): the node is gone, as when a cancel comes while terminate
                # runs, so the removal counts and the cancel is left to the next step.
            # A node whose termination failed for good stays "draining", for an operator.
            await self.report(inp.op_id, gone)

    async def _restore(self, inp: OperationInput, node: Node, stay: list[Node]) -> None:
        """Undo a removal cut short, as a cancelled scale-out moves its slots back: the
        node gets an even share of the slots again, their keys copied back to it by the
        same migration. What it kept of them from before is stale, so it goes first."""
        await self.rebalance(inp, [*stay, node], purge=True, stale_targets=True)
