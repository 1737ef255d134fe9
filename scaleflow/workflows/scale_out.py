"""Scale-out: provision, wait until the node answers, register; undo on failure."""

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
        Engine,
        Node,
        NodeState,
        OperationInput,
        OperationResult,
        ProviderName,
    )

# workflow.patched id: a compensated first scale-out (no members before it) clears the map
# it gave the new nodes, instead of leaving every slot to a node that it terminated.
CLEARS_FIRST_MAP = "scale-out-clears-first-map"
# workflow.patched id: no-op nodes are made by a local activity, and the nodes of an
# unslotted pool reach it in the operation's result rather than one signal each.
LEAN_UNSLOTTED = "scale-out-lean-unslotted"
# Providers that make a node in milliseconds, idempotently on its id.
QUICK_PROVIDERS = frozenset({ProviderName.LOCAL, ProviderName.NOOP})


@workflow.defn
class ScaleOutWorkflow(OperationBase):
    @workflow.run
    async def run(self, inp: OperationInput) -> OperationResult:
        snapshot = await self.wait_turn(inp)
        members = [n for n in snapshot.nodes if n.state == NodeState.READY]
        known = [n.provider_ref for n in snapshot.nodes if n.provider_ref]
        # Every node id this run asked for, made or not: compensation covers them all.
        attempted: dict[str, Node | None] = {}
        ready: list[Node] = []
        try:
            for _ in range(inp.count):
                node_id = str(workflow.uuid4())
                attempted[node_id] = None
                req = ProvisionInput(
                    pool=inp.pool, node_id=node_id, config=inp.config, known_refs=known
                )
                if inp.config.provider == ProviderName.LOCAL or (
                    inp.config.provider in QUICK_PROVIDERS
                    and inp.config.engine != Engine.MEMCACHED
                    and workflow.patched(LEAN_UNSLOTTED)
                ):
                    # Starting a local process (or nothing) takes milliseconds and is
                    # idempotent on the node id: a local activity saves a round trip.
                    made = await workflow.execute_local_activity(
                        "provision_node",
                        req,
                        result_type=ProvisionResult,
                        summary=f"provision node {node_id} for pool {inp.pool}",
                        **options.local(),
                    )
                else:
                    made = await workflow.execute_activity(
                        "provision_node",
                        req,
                        result_type=ProvisionResult,
                        summary=f"provision node {node_id} for pool {inp.pool}",
                        **options.provision(),
                    )
                attempted[node_id] = made.node
                known.append(made.node.provider_ref)
                # Provisioning is waited out on cancel, so its await may have swallowed one.
                self.honour_cancel()
                node = made.node
                if node.state != NodeState.READY:
                    # Not yet seen answering (a slow boot, a cloud instance): wait for it.
                    up = await workflow.execute_activity(
                        "node_ready",
                        ReadyInput(node=made.node, config=inp.config, timeout_s=600),
                        result_type=ReadyResult,
                        summary=f"wait for node {node_id} to answer",
                        **options.long_running(600, attempts=3),
                    )
                    node = up.node
                ready.append(node)
            slotted = inp.config.engine == Engine.MEMCACHED
            joined = self.joined_map([*members, *ready]) if slotted else None
            # An unslotted pool takes the nodes from the result: nothing waits on them.
            if slotted or not workflow.patched(LEAN_UNSLOTTED):
                for i, node in enumerate(ready):
                    await self.report(inp.op_id, node, joined if i == len(ready) - 1 else None)
            if slotted:
                await self.rebalance(inp, [*members, *ready], purge=True)
            return OperationResult(added=ready)
        except BaseException:
            with self.committed():
                if inp.config.engine == Engine.MEMCACHED and self._owns_slots(attempted):
                    if members:
                        # Move the new nodes' slots (and keys) back before destroying them.
                        await self.rebalance(inp, members, purge=False)
                    elif workflow.patched(CLEARS_FIRST_MAP):
                        # Nobody to give them back to: the pool's cache goes with the nodes.
                        await self.set_map(self.map.cleared())
                await self._compensate(inp, attempted)
            raise

    def _owns_slots(self, attempted: dict[str, Node | None]) -> bool:
        return any(r.node in attempted for r in self.map.ranges)

    async def _compensate(self, inp: OperationInput, attempted: dict[str, Node | None]) -> None:
        await self.forget(list(attempted))
        for node_id, node in attempted.items():
            target = node or Node(
                id=node_id, provider_ref="", state=NodeState.PROVISIONING, created_at=workflow.now()
            )
            await self.terminate(inp, target)
            await self.report(inp.op_id, target.model_copy(update={"state": NodeState.TERMINATED}))
