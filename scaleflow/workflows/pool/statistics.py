"""A pool's statistics and its autoscaler, behind a narrow interface: one reading loop
reads the pool's source (memcached stats or CloudWatch for the miss-rate rule; Nomad
or Prometheus for a policy's checks or target value); :meth:`Statistics.decide` turns
a reading into a decision; the pool queues it. Decisions are made by the pool's main
loop only, so they never depend on where a workflow task was cut (see
scaleflow.workflows.queue)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

from scaleflow.workflows import options

with workflow.unsafe.imports_passed_through():
    from scaleflow.core.autoscale import (
        AutoscalerConfig,
        AutoscalerState,
        NodeCounters,
        StatsSample,
    )
    from scaleflow.core.autoscaling.checks import ChecksPolicy
    from scaleflow.core.autoscaling.decision import (
        DecisionRecord,
        Rule,
        ScaleDirection,
        ScalingDecision,
        ScalingGate,
        StrategyState,
    )
    from scaleflow.core.autoscaling.miss_rate import MissRatePolicy
    from scaleflow.core.autoscaling.policy_settings import AutoscalingSettings
    from scaleflow.core.autoscaling.readings import Readings, miss_rate_reading
    from scaleflow.core.autoscaling.source_io import NomadAllocationInput, PrometheusQueryInput
    from scaleflow.core.autoscaling.strategies import decide_scaling
    from scaleflow.core.autoscaling.target_value import TargetValuePolicy
    from scaleflow.core.models import Node, PoolConfig
    from scaleflow.core.stats_io import StatsInput, StatsResult

STATS_KEPT = 30
DECISIONS_KEPT = 100
SKIPPED = "a resize is still running: skipped"


@dataclass
class Reading:
    """A miss rate for the rule; ``forced`` readings (the seed's set_test_miss_rate)
    ignore cooldown, streaks and repeats, and carry the update waiting for them.
    ``sample`` is the statistics it came from; ``source`` holds a policy source's
    readings instead (``ok`` False: the source could not be read)."""

    miss_rate: float
    forced: bool = False
    ticket: int = 0
    sample: StatsSample | None = None
    source: Readings | None = None
    source_name: str = ""
    ok: bool = True


@dataclass
class Statistics:
    config: AutoscalerConfig
    state: AutoscalerState
    samples: list[StatsSample]
    counters: dict[str, NodeCounters]
    # The policy autoscaler's memory, and the last decisions of either rule.
    strategy_state: StrategyState = field(default_factory=StrategyState)
    decisions: list[DecisionRecord] = field(default_factory=list)
    readings: list[Reading] = field(default_factory=list)
    # Reasons of handled forced readings, by ticket, for the updates that wait on them.
    answers: dict[int, str] = field(default_factory=dict)
    tickets: int = 0
    sample_now: bool = False
    sampling: bool = False

    # ---- the reading loop (its own coroutine: a timer and a local activity) -------

    async def run(
        self,
        pool: str,
        members: Callable[[], list[Node]],
        active: Callable[[], bool],
        policy: Callable[[], PoolConfig | None],
    ) -> None:
        """One loop for every autoscaler: ``active`` says the pool's memcached stats are
        read; ``policy`` gives the configuration whose own autoscaler is on, if any."""
        while True:
            self.sample_now = False
            auto = policy()
            # Without a policy autoscaler the loop keeps the stats' own interval (and so
            # the histories it always made).
            interval = auto.autoscaling.interval_s if auto else self.config.interval_s
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(
                    lambda: self.sample_now, timeout=timedelta(seconds=interval)
                )
            stats_on, auto = active(), policy()
            if not stats_on and auto is None:
                continue
            self.sampling = True
            try:
                sample = await self._read(pool, members()) if stats_on else None
                if auto is not None:
                    self.readings.append(await self._read_source(auto))
            finally:
                self.sampling = False
            if sample is not None and self.config.auto_mode and auto is None:
                rate = sample.cloudwatch_miss_rate
                self.readings.append(
                    Reading(sample.miss_rate if rate is None else rate, sample=sample)
                )

    async def _read_source(self, cfg: PoolConfig) -> Reading:
        auto = cfg.autoscaling
        arg: NomadAllocationInput | PrometheusQueryInput
        if auto.source == "nomad":
            # As Chemtrail: the policy is its node class's, so every node of the class counts.
            name, arg = "read_nomad_allocation", NomadAllocationInput.for_pool(cfg, [])
        else:
            assert auto.query is not None  # the settings require it
            name = "read_prometheus_query"
            arg = PrometheusQueryInput(
                address=auto.prometheus_address,
                query=auto.query,
                metric=auto.metric,
                unit="%" if auto.strategy == "threshold" else "",
                pool=cfg.name,
            )
        try:
            got = await workflow.execute_local_activity(
                name,
                arg,
                result_type=Readings,
                summary=f"read {auto.source} for pool {cfg.name}",
                **options.quick(attempts=3),
            )
        except (ActivityError, ApplicationError) as exc:
            cause = exc.cause.message if isinstance(exc, ActivityError) and exc.cause else str(exc)
            workflow.logger.warning("pool %s: could not read %s", cfg.name, auto.source)
            return Reading(0.0, source=Readings(), source_name=f"{auto.source} ({cause})", ok=False)
        return Reading(0.0, source=got, source_name=auto.source)

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
        except (ActivityError, ApplicationError):
            # A local activity the worker cannot run fails as a bare ApplicationError;
            # either way the loop must live on to the next round.
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

    def decide(self, reading: Reading, size: int, busy: bool, cfg: PoolConfig) -> ScalingDecision:
        """The rule's answer to one reading; the pool queues a resize it names
        (``acted``), and records it (:meth:`record`)."""
        if reading.source is not None:
            decision = self._decide_policy(reading, size, busy, cfg)
        else:
            decision = self._decide_miss_rate(reading, size, busy, cfg)
        if reading.forced:
            reason = decision.reason
            if decision.acted:
                reason = f"autoscaler: {reason}"
            self.answers[reading.ticket] = reason
        return decision

    def _decide_miss_rate(
        self, reading: Reading, size: int, busy: bool, pool: PoolConfig
    ) -> ScalingDecision:
        if busy:
            # The original skips a round while the previous resize still runs.
            return self._skipped("threshold/miss-rate", self.strategy_state)
        cfg = self.config
        if reading.forced:
            cfg = cfg.model_copy(
                update={
                    "skip_identical": False,
                    "consecutive": 1,
                    "cooldown_s": 0,
                    "cooldown_out_s": None,
                    "cooldown_in_s": None,
                }
            )
        gate = ScalingGate(min_count=pool.min_count, max_count=pool.max_count, dry_run=cfg.dry_run)
        state = StrategyState.model_validate(self.state.model_dump())
        sample = reading.sample or StatsSample(at=workflow.now())
        measured = miss_rate_reading(sample).model_copy(update={"value": reading.miss_rate})
        if reading.sample is None:
            measured.text, measured.source = f"miss rate {reading.miss_rate:.3f}", "test"
        decision = decide_scaling(
            MissRatePolicy(config=cfg), [measured], size, gate, state, workflow.now()
        )
        self.state = AutoscalerState.model_validate(
            decision.state.model_dump(include=set(AutoscalerState.model_fields))
        )
        if decision.count is not None:
            # The counters start over: the next reading is of the resized pool.
            self.counters = {}
        return decision

    def _decide_policy(
        self, reading: Reading, size: int, busy: bool, cfg: PoolConfig
    ) -> ScalingDecision:
        auto: AutoscalingSettings = cfg.autoscaling
        rule: Rule = "threshold/checks" if auto.strategy == "threshold" else "target-value"
        assert reading.source is not None
        if not reading.ok:
            return ScalingDecision(
                count=None,
                direction=ScaleDirection.NONE,
                reason=f"could not read {reading.source_name}: skipped",
                rule=rule,
                state=self.strategy_state,
            )
        if busy:
            # Chemtrail skips a run while the previous one is still going.
            return self._skipped(rule, self.strategy_state, reading.source)
        strategy: ChecksPolicy | TargetValuePolicy
        if auto.strategy == "threshold":
            strategy = ChecksPolicy.for_pool(cfg)
        else:
            assert auto.metric is not None and auto.target is not None
            strategy = TargetValuePolicy(
                metric=auto.metric, target=auto.target, tolerance=auto.tolerance
            )
        gate = ScalingGate.for_pool(
            cfg,
            cooldown_out_s=auto.cooldown_out_s,
            cooldown_in_s=auto.cooldown_in_s,
            consecutive=auto.consecutive,
            dry_run=auto.dry_run,
        )
        decision = decide_scaling(
            strategy, reading.source.readings, size, gate, self.strategy_state, workflow.now()
        )
        self.strategy_state = decision.state
        return decision

    def _skipped(
        self, rule: Rule, state: StrategyState, source: Readings | None = None
    ) -> ScalingDecision:
        return ScalingDecision(
            count=None,
            direction=ScaleDirection.NONE,
            reason=SKIPPED,
            rule=rule,
            readings=source.readings if source else [],
            state=state,
        )

    def record(
        self,
        reading: Reading,
        decision: ScalingDecision,
        size: int,
        dry_run: bool,
        operation: str | None,
    ) -> None:
        """Keep the decision for ``GET /v1/pools/{name}/decisions`` (the last 100)."""
        # All the round read, not only what the rule used.
        readings = reading.source.readings if reading.source else decision.readings
        text = ", ".join(r.text for r in readings) or (
            "no readings" if reading.source is not None else f"miss rate {reading.miss_rate:.3f}"
        )
        sources = sorted({r.source for r in readings}) or [reading.source_name or "memcached"]
        self.decisions = [
            *self.decisions,
            DecisionRecord(
                at=workflow.now(),
                rule=decision.rule,
                reading=text,
                source=", ".join(sources),
                result=decision.reason,
                direction=decision.direction,
                count=size,
                new_count=decision.count,
                acted=operation is not None,
                dry_run=dry_run,
                operation=operation,
            ),
        ][-DECISIONS_KEPT:]
