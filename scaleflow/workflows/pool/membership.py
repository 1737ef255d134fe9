"""A pool's members and slot map: what operations report, and what the provider says."""

from __future__ import annotations

from dataclasses import dataclass

from temporalio import workflow
from temporalio.exceptions import ActivityError

from scaleflow.workflows import options

with workflow.unsafe.imports_passed_through():
    from scaleflow.core.activity_io import ListNodesInput, ListNodesResult
    from scaleflow.core.models import Node, NodeChange, NodeState, PoolConfig, PoolSnapshot
    from scaleflow.core.slots import SlotMap


@dataclass
class Membership:
    nodes: dict[str, Node]
    slot_map: SlotMap

    def snapshot(self) -> PoolSnapshot:
        return PoolSnapshot(nodes=list(self.nodes.values()), slot_map=self.slot_map)

    def take_map(self, slot_map: SlotMap) -> None:
        # Epochs only rise: a late or repeated signal cannot roll the map back.
        if slot_map.epoch > self.slot_map.epoch:
            self.slot_map = slot_map

    def apply(self, change: NodeChange) -> int:
        """Record an operation's report; returns the change in size (+1, -1 or 0)."""
        if change.slot_map is not None:
            self.take_map(change.slot_map)
        node = change.node
        if node.state == NodeState.TERMINATED:
            return -1 if self.nodes.pop(node.id, None) is not None else 0
        is_new = node.id not in self.nodes
        self.nodes[node.id] = node
        return 1 if is_new else 0

    def resolve(self, refs: list[str]) -> list[str]:
        """Node ids for refs that name a node by id or by address."""
        by_address = {n.address: n.id for n in self.nodes.values() if n.address}
        return [r if r in self.nodes else by_address[r] for r in refs]

    def ready(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.state == NodeState.READY]

    async def sync(self, name: str, config: PoolConfig) -> None:
        """Adopt the provider's view of the pool's nodes (a new or re-pointed pool)."""
        try:
            found = await workflow.execute_activity(
                "list_pool_nodes",
                ListNodesInput(pool=name, config=config),
                result_type=ListNodesResult,
                summary=f"list the provider's nodes of pool {name}",
                **options.quick(attempts=3),
            )
        except ActivityError:
            workflow.logger.warning("pool %s: could not list the provider's nodes", name)
            return
        if found.nodes is None:
            return
        by_ref = {n.provider_ref: n for n in self.nodes.values()}
        self.nodes = {}
        for node in found.nodes:
            mine = by_ref.get(node.provider_ref)
            kept = mine if mine is not None else node
            self.nodes[kept.id] = kept
