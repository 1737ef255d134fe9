"""The entity's clock and failure detection: each tick pings every proxy's nodes with a
local activity; dead nodes become failure reports; a proxy with a quorum of live reports
gets a failover (unless ``auto_failover`` is off).

The clock's timer is started by the main loop, in line, when it is needed: a timer started
by a task of its own would be issued after the request-driven commands of the same step
(see ``entity``). Ticks are history events, so ``tick_at`` (the time of the last one) is
the same on every replay; reports and TTLs use it rather than ``workflow.now()``.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from scaleflow.core.broker.activity_io import PingNodesInput, PingNodesResult
    from scaleflow.core.broker.errors import BrokerError
    from scaleflow.core.broker.failures import prune_failures
    from scaleflow.workflows.broker import failures, planning
    from scaleflow.workflows.broker.planning import BrokerState, Outcome
    from scaleflow.workflows.broker.requests import OpState

PING_TIMEOUT = timedelta(seconds=5)


class FailureDetection:
    """Mixed into ``BrokerWorkflow``, which owns the attributes below."""

    name: str
    state: BrokerState
    interval: float
    clock: asyncio.TimerHandle | None
    ticks: int
    tick_at: float
    pinging: bool
    readings: list[tuple[float, PingNodesResult]]
    failing: dict[str, str]
    failover_after: dict[str, float]
    retry_at: dict[str, float]

    def _apply(self, out: Outcome, op_id: str) -> OpState | None:
        raise NotImplementedError

    # ---- the clock ---------------------------------------------------------------------------

    def _clock_needed(self) -> bool:
        meta = self.state.meta
        return bool(
            failures.ping_targets(meta)
            or meta.failures
            or self.retry_at
            or self.failover_after
            or self.state.held
            # The clock also drives metadata replication.
            or self.state.config.replica_addresses
        )

    def _arm_clock(self) -> None:
        if self.clock is None and self._clock_needed():
            self.clock = asyncio.get_running_loop().call_later(self.interval, self._tick)

    def _tick(self) -> None:
        self.clock = None
        self.ticks += 1
        self.tick_at = workflow.now().timestamp()

    # ---- pings -----------------------------------------------------------------------------

    def _prune(self) -> None:
        pruned = prune_failures(self.state.meta, self.tick_at, self.state.config)
        if pruned is not self.state.meta:
            self.state = planning.with_meta(self.state, pruned)
        self.failover_after = {a: t for a, t in self.failover_after.items() if t > self.tick_at}

    def _ping(self) -> None:
        targets = failures.ping_targets(self.state.meta)
        if self.pinging or not targets:
            return
        self.pinging = True
        # A local activity: a short read each second needs no task-queue round trip.
        handle = workflow.start_local_activity(
            "ping_redis_nodes",
            PingNodesInput(addresses=targets),
            result_type=PingNodesResult,
            summary=f"ping {len(targets)} nodes",
            start_to_close_timeout=PING_TIMEOUT,
            retry_policy=RetryPolicy(maximum_attempts=1),
        )
        asyncio.create_task(self._reading(handle, self.tick_at))  # noqa: RUF006

    async def _reading(self, handle: Any, at: float) -> None:
        # Awaiting issues no command: the loop turns the reading into reports.
        try:
            self.readings.append((at, await handle))
        except ActivityError:
            workflow.logger.warning("broker %s: ping failed", self.name)
        finally:
            self.pinging = False

    def _take_readings(self) -> None:
        taken, self.readings = self.readings, []
        reporter = failures.reporter_id(self.name)
        for at, reading in taken:
            meta = failures.record_reading(self.state.meta, reading, reporter, at)
            self.state = planning.with_meta(self.state, meta)

    # ---- failovers ---------------------------------------------------------------------------

    def _detect(self) -> None:
        """Queue a failover for each proxy that failed (quorum within the TTL)."""
        if not self.state.config.auto_failover:
            return
        now = self.tick_at
        for address in failures.due_failovers(
            self.state, now, set(self.failing), self.failover_after
        ):
            if not failures.worth_failing_over(self.state, address):
                self.failover_after[address] = now + failures.FAILOVER_RETRY_S
                continue
            try:
                out = planning.fail_over(self.state, address, reason="failure detection")
            except BrokerError as err:
                workflow.logger.warning("broker %s: no failover of %s: %s", self.name, address, err)
                self.failover_after[address] = now + failures.FAILOVER_RETRY_S
                continue
            self._apply(out, str(workflow.uuid4()))
