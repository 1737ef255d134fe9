"""A pool's statistics and its miss-rate autoscaler, behind a narrow interface: the
reading loop collects readings; :meth:`Statistics.decide` turns one into a decision;
the pool queues it. Decisions are made by the pool's main loop only, so they never
depend on where a workflow task was cut (see scaleflow.workflows.queue)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError

from scaleflow.workflows import options

with workflow.unsafe.imports_passed_through():
    from scaleflow.core.autoscale import (
        AutoscalerConfig,
        AutoscalerState,
        Decision,
        NodeCounters,
        StatsSample,
        decide,
    )
    from scaleflow.core.models import Node
    from scaleflow.core.stats_io import StatsInput, StatsResult

STATS_KEPT = 30


@dataclass
class Reading:
    """A miss rate for the rule; ``forced`` readings (the seed's set_test_miss_rate)
    ignore cooldown, streaks and repeats, and carry the update waiting for them."""

    miss_rate: float
    forced: bool = False
    ticket: int = 0


@dataclass
class Statistics:
    config: AutoscalerConfig
    state: AutoscalerState
    samples: list[StatsSample]
    counters: dict[str, NodeCounters]
    readings: list[Reading] = field(default_factory=list)
    # Reasons of handled forced readings, by ticket, for the updates that wait on them.
    answers: dict[int, str] = field(default_factory=dict)
    tickets: int = 0
    sample_now: bool = False
    sampling: bool = False

    # ---- the reading loop (its own coroutine: a timer and a local activity) -------

    async def run(
        self, pool: str, members: Callable[[], list[Node]], active: Callable[[], bool]
    ) -> None:
        while True:
            self.sample_now = False
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(
                    lambda: self.sample_now, timeout=timedelta(seconds=self.config.interval_s)
                )
            if not active():
                continue
            self.sampling = True
            try:
                sample = await self._read(pool, members())
            finally:
                self.sampling = False
            if sample is not None and self.config.auto_mode:
                rate = sample.cloudwatch_miss_rate
                self.readings.append(Reading(sample.miss_rate if rate is None else rate))

    async def _read(self, pool: str, members: list[Node]) -> StatsSample | None:
        try:
            # A local activity: a short read, once a minute, needs no task queue round trip.
            got = await workflow.execute_local_activity(
                "pool_stats",
                StatsInput(
                    pool=pool,
                    nodes=members,
                    cloudwatch=self.config.cloudwatch,
                    interval_s=self.config.interval_s,
                    previous=self.counters,
                ),
                result_type=StatsResult,
                summary=f"read the statistics of {len(members)} nodes",
                **options.quick(attempts=3),
            )
        except ActivityError:
            workflow.logger.warning("pool %s: could not read statistics", pool)
            return None
        self.counters = got.counters
        sample = StatsSample(
            at=workflow.now(),
            gets=got.gets,
            hits=got.hits,
            misses=got.misses,
            items=got.items,
            bytes=got.bytes,
            nodes=len(members),
            seconds=self.config.interval_s,
            cloudwatch_miss_rate=got.cloudwatch_miss_rate,
        )
        self.samples = [*self.samples, sample][-STATS_KEPT:]
        return sample

    # ---- for handlers -----------------------------------------------------------

    def configure(self, cfg: AutoscalerConfig) -> None:
        switched_on = cfg.auto_mode and not self.config.auto_mode
        self.config = cfg
        if switched_on:
            self.sample_now = True  # switching auto_mode on evaluates at once

    def force(self, miss_rate: float) -> int:
        """Queue a forced reading for the main loop; returns its ticket."""
        self.tickets += 1
        self.readings.append(Reading(miss_rate, forced=True, ticket=self.tickets))
        return self.tickets

    # ---- for the main loop --------------------------------------------------------

    def decide(self, reading: Reading, size: int, busy: bool, low: int, high: int) -> Decision:
        """The rule's answer to one reading; the pool queues a resize it names."""
        if busy:
            # The original skips a round while the previous resize still runs.
            decision = Decision(
                size=None, reason="a resize is still running: skipped", state=self.state
            )
        else:
            cfg = self.config
            if reading.forced:
                cfg = cfg.model_copy(
                    update={"skip_identical": False, "consecutive": 1, "cooldown_s": 0}
                )
            decision = decide(size, reading.miss_rate, cfg, self.state, workflow.now(), low, high)
            self.state = decision.state
            if decision.size is not None:
                # The counters start over: the next reading is of the resized pool.
                self.counters = {}
        if reading.forced:
            reason = decision.reason
            if decision.size is not None:
                reason = f"autoscaler: {reason}"
            self.answers[reading.ticket] = reason
        return decision
