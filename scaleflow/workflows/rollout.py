"""Config roll-out: new cache settings on every node with no cached key lost.

Nodes are replaced one at a time: start a node with the new settings, move all of
the old node's slots to it, drain and stop the old one.

A failure or a cancel undoes the replacement under way, up to the moment its old node
starts being terminated (the point of no return): the old node takes back every slot
the new one got, with their keys (its own copies of them are stale, so they are purged
first, as a cut-short scale-in does), is in service again, and the new node is
destroyed. The pool is then as it was before that step: the same size, balanced, every
key readable. Replacements already finished stay done (their old nodes are gone), so a
pool of several nodes may be left with some nodes on the new settings; the pool's
recorded settings change only when the whole roll-out succeeds. A cancel that comes
while an old node is being terminated lets that step finish, and the next step does not
start; so does one that lands together with the termination's result (the SDK raises it
in place of that result).
"""

from __future__ import annotations

import asyncio

from temporalio import workflow

from scaleflow.workflows import options
from scaleflow.workflows.operation import OperationBase

with workflow.unsafe.imports_passed_through():
    from scaleflow.core.activity_io import (
        ProvisionInput,
        ProvisionResult,
        ReadyInput,
        ReadyResult,
    )
    from scaleflow.core.models import (
        Node,
        NodeState,
        OperationInput,
        OperationResult,
        PoolConfig,
    )

APPLIED_SIGNAL = "cache_settings_applied"
# workflow.patched id: a replacement cut short gives the old node its slots back and
# destroys the new node (before: both stayed members once the new one owned slots).
ROLLOUT_UNDOES_STEP = "rollout-undoes-step"
# workflow.patched id: a cancel raised in place of a terminate_node result no longer skips
# the node's "terminated" report (before: the pool kept a node the provider had not).
ROLLOUT_REPORTS_TERMINATION = "rollout-reports-termination"


@workflow.defn
class ConfigRolloutWorkflow(OperationBase):
    @workflow.run
    async def run(self, inp: OperationInput) -> OperationResult:
        assert inp.cache is not None
        snapshot = await self.wait_turn(inp)
        config = inp.config.model_copy(
            update={"capacity_mb": inp.cache.capacity_mb, "eviction": inp.cache.eviction}
        )
        known = [n.provider_ref for n in snapshot.nodes if n.provider_ref]
        added: list[Node] = []
        removed: list[str] = []
        for old in [n for n in snapshot.nodes if n.state == NodeState.READY]:
            # A cancel swallowed while the last step finished stops the roll-out here.
            self.honour_cancel()
            new = await self._start(inp, config, known)
            known.append(new.provider_ref)
            added.append(new)
            await self._replace(inp, old, new)
            removed.append(old.id)
        pool = self.pool_id()
        if pool is not None:
            await workflow.get_external_workflow_handle(pool).signal(APPLIED_SIGNAL, inp.cache)
        return OperationResult(added=added, removed=removed)

    async def _start(self, inp: OperationInput, config: PoolConfig, known: list[str]) -> Node:
        node_id = str(workflow.uuid4())
        made: ProvisionResult | None = None
        joined = False
        try:
            made = await workflow.execute_activity(
                "provision_node",
                ProvisionInput(pool=inp.pool, node_id=node_id, config=config, known_refs=known),
                result_type=ProvisionResult,
                summary=f"provision node {node_id} with the new config for pool {inp.pool}",
                **options.provision(),
            )
            # Provisioning is waited out on cancel, so its await may have swallowed one.
            self.honour_cancel()
            up = await workflow.execute_activity(
                "node_ready",
                ReadyInput(node=made.node, config=config, timeout_s=600),
                result_type=ReadyResult,
                summary=f"wait for node {node_id} to answer",
                **options.long_running(600, attempts=3),
            )
            # Inside the try: a cancel these signals swallow is raised here, node made.
            joined = True
            await self.report(inp.op_id, up.node)
            await self.add_address(up.node)
        except BaseException:
            with self.committed():
                target = made.node if made else Node(id=node_id, created_at=workflow.now())
                if joined:
                    await self.forget([node_id])
                await self._destroy(inp, target, reported=joined)
            raise
        return up.node

    async def _replace(self, inp: OperationInput, old: Node, new: Node) -> None:
        draining = old.model_copy(update={"state": NodeState.DRAINING})
        moving = True
        try:
            await self.report(inp.op_id, draining)
            await self.migrate(inp, self.map.handover(old.id, new.id), purge=False)
            moving = False
            await self.forget([old.id])
            await self.drain(inp, draining)
            # The last moment to turn back: the old node is about to be terminated.
            self.honour_cancel()
        except BaseException:
            with self.committed():
                if workflow.patched(ROLLOUT_UNDOES_STEP):
                    await self._undo(inp, old, new)
                elif moving:
                    await self._undo_before_patch(inp, old, new)
            raise
        with self.committed():
            await self._destroy(inp, draining)

    async def _undo(self, inp: OperationInput, old: Node, new: Node) -> None:
        """Undo a replacement cut short: ``old`` takes back the slots ``new`` got, with
        their keys (what ``old`` kept of them is stale, so it is purged first), is in
        service again, and ``new`` is destroyed. If the slots cannot all be moved back,
        ``new`` stays a member: a node that owns slots is never destroyed."""
        try:
            if self.map.owned(new.id):
                # Dropped from the map once its slots had gone: clients must find it again.
                await self.add_address(old)
                moves = self.map.handover(new.id, old.id)
                await self.migrate(inp, moves, purge=False, stale_targets=True)
        finally:
            await self.report(inp.op_id, old)
        await self.forget([new.id])
        await self._destroy(inp, new)

    async def _destroy(self, inp: OperationInput, node: Node, reported: bool = True) -> None:
        """Terminate ``node`` and, if the pool knows it (``reported``), report it gone.

        A cancel raised in place of terminate_node's result skipped the report, and the
        pool kept a node the provider no longer had. :meth:`terminate` finishes such a
        termination itself now (``TERMINATE_OUTLASTS_CANCEL``); the branch below replays
        the histories recorded between the two patches."""
        try:
            await self.terminate(inp, node)
        except asyncio.CancelledError:
            if workflow.cancellation_reason() is None or not workflow.patched(
                ROLLOUT_REPORTS_TERMINATION
            ):
                raise  # not the operation's cancel (an eviction), or a history from before
            await self.terminate(inp, node)
        if reported:
            await self.report(inp.op_id, node.model_copy(update={"state": NodeState.TERMINATED}))

    async def _undo_before_patch(self, inp: OperationInput, old: Node, new: Node) -> None:
        """What a replacement cut short did before ``ROLLOUT_UNDOES_STEP``, kept for
        histories recorded then: once ``new`` owned slots, both nodes stayed members."""
        await self.report(inp.op_id, old)
        if not any(r.node == new.id for r in self.map.ranges):
            await self.forget([new.id])
            await self.terminate(inp, new)
            await self.report(inp.op_id, new.model_copy(update={"state": NodeState.TERMINATED}))
