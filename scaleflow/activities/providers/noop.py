"""The ``no-op`` provider: logs what it would do and changes nothing."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from scaleflow.activities.notes import note
from scaleflow.core.activity_io import (
    ListNodesInput,
    ListNodesResult,
    ProvisionInput,
    ProvisionResult,
    TerminateInput,
)
from scaleflow.core.models import ActivityReport, Node, NodeState

SOURCE = "no-op"
log = logging.getLogger(__name__)


class NoopProvider:
    name = "no-op"

    def provision(self, req: ProvisionInput) -> ProvisionResult:
        log.info("no-op provision pool=%s node=%s", req.pool, req.node_id)
        # Nothing was started, so there is nothing to wait for: the node is "ready" at
        # once (chemtrail's no-op provider adds no capacity and waits for none). It has
        # no address, so its slots change owner without a copy.
        node = Node(
            id=req.node_id,
            provider_ref=req.node_id,
            state=NodeState.READY,
            created_at=datetime.now(UTC),
        )
        return ProvisionResult(node=node, events=[note(f"no-op: added node {req.node_id}", SOURCE)])

    def terminate(self, req: TerminateInput) -> ActivityReport:
        log.info("no-op terminate pool=%s node=%s", req.pool, req.node.id)
        return ActivityReport(events=[note(f"no-op: removed node {req.node.id}", SOURCE)])

    def list_nodes(self, req: ListNodesInput) -> ListNodesResult:
        return ListNodesResult(nodes=None)
