"""Config roll-out: new cache settings on every node with no cached key lost.

Nodes are replaced one at a time: start a node with the new settings, move all of
the old node's slots to it, drain and stop the old one. A step that fails before
its new node owns slots destroys that node; after that, both stay members.
"""

from __future__ import annotations

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
        try:
            made = await workflow.execute_activity(
                "provision_node",
                ProvisionInput(pool=inp.pool, node_id=node_id, config=config, known_refs=known),
                result_type=ProvisionResult,
                **options.provision(),
            )
            up = await workflow.execute_activity(
                "node_ready",
                ReadyInput(node=made.node, config=config, timeout_s=600),
                result_type=ReadyResult,
                **options.long_running(600, attempts=3),
            )
        except BaseException:
            target = made.node if made else Node(id=node_id, created_at=workflow.now())
            await self.terminate(inp, target)
            raise
        await self.report(inp.op_id, up.node)
        await self.add_address(up.node)
        return up.node

    async def _replace(self, inp: OperationInput, old: Node, new: Node) -> None:
        draining = old.model_copy(update={"state": NodeState.DRAINING})
        await self.report(inp.op_id, draining)
        try:
            await self.migrate(inp, self.map.handover(old.id, new.id), purge=False)
        except BaseException:
            await self.report(inp.op_id, old)
            if not any(r.node == new.id for r in self.map.ranges):
                await self.forget([new.id])
                await self.terminate(inp, new)
                await self.report(inp.op_id, new.model_copy(update={"state": NodeState.TERMINATED}))
            raise
        await self.forget([old.id])
        await self.drain(inp, draining)
        await self.terminate(inp, draining)
        await self.report(inp.op_id, old.model_copy(update={"state": NodeState.TERMINATED}))
