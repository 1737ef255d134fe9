"""What every operation shares: waiting for its turn and reporting to its pool."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from scaleflow.core.models import Node, NodeChange, PoolSnapshot


class OperationBase:
    """An operation starts at once (so it is visible and cancellable while queued)
    and waits until its pool gives it the turn with a snapshot of the nodes."""

    def __init__(self) -> None:
        self._snapshot: PoolSnapshot | None = None

    @workflow.signal
    def go(self, snapshot: PoolSnapshot) -> None:
        self._snapshot = snapshot

    async def wait_turn(self) -> PoolSnapshot:
        await workflow.wait_condition(lambda: self._snapshot is not None)
        assert self._snapshot is not None
        return self._snapshot

    async def report(self, op_id: str, node: Node) -> None:
        parent = workflow.info().parent
        if parent is None:
            return  # run on its own (tests, tools): there is no pool to tell
        handle = workflow.get_external_workflow_handle(parent.workflow_id)
        await handle.signal("node_changed", NodeChange(op_id=op_id, node=node))
