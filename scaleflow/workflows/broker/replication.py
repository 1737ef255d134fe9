"""Metadata replication: every ``replicate_interval_s`` (10 s, undermoon's
``sync_meta_interval``) the clock's tick ``PUT``s the whole metadata to each of the
config's ``replica_addresses``. A replica that missed a round gets the next one; one that
holds newer metadata refuses it, which is no error.

A replica is a broker of its own (another API instance, ``SCALEFLOW_BROKER_NAME``) whose
metadata only the PUTs change; turn its ``auto_failover`` off so that it never acts on
clusters it does not run.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from scaleflow.core.broker.activity_io import ReplicateMetaInput, ReplicateMetaResult
    from scaleflow.workflows.broker.planning import BrokerState

# One round must end before the next is due; a missed round is simply the next one's.
REPLICATE_TIMEOUT = timedelta(seconds=15)


class MetaReplication:
    """Mixed into ``BrokerWorkflow``, which owns the attributes below."""

    name: str
    state: BrokerState
    tick_at: float
    replicate_interval: float
    replicating: bool
    replicated_at: float
    replica_failures: dict[str, str]

    def _replication_needed(self) -> bool:
        return bool(self.state.config.replica_addresses)

    def _replicate(self) -> None:
        addresses = self.state.config.replica_addresses
        due = self.tick_at - self.replicated_at >= self.replicate_interval
        if self.replicating or not addresses or not due:
            return
        self.replicating = True
        self.replicated_at = self.tick_at
        handle = workflow.start_activity(
            "replicate_broker_meta",
            ReplicateMetaInput(addresses=list(addresses), meta=self.state.meta),
            result_type=ReplicateMetaResult,
            summary=f"replicate metadata to {len(addresses)} brokers",
            schedule_to_close_timeout=REPLICATE_TIMEOUT,
            retry_policy=RetryPolicy(maximum_attempts=1),
        )
        asyncio.create_task(self._replicated(handle))  # noqa: RUF006

    async def _replicated(self, handle: Any) -> None:
        # Awaiting issues no command; the outcome is only kept for the query.
        try:
            result: ReplicateMetaResult = await handle
            self.replica_failures = result.failed
        except ActivityError as err:
            workflow.logger.warning("broker %s: replication failed: %s", self.name, err)
            self.replica_failures = dict.fromkeys(self.state.config.replica_addresses, str(err))
        finally:
            self.replicating = False
