"""One entry point for the pool's loop: a strategy's settings pick its rule."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, Field

from scaleflow.core.autoscaling.checks import ChecksPolicy, decide_checks
from scaleflow.core.autoscaling.decision import ScalingDecision, ScalingGate, StrategyState
from scaleflow.core.autoscaling.miss_rate import MissRatePolicy, decide_miss_rate
from scaleflow.core.autoscaling.readings import Reading
from scaleflow.core.autoscaling.target_value import TargetValuePolicy, decide_target_value

# "miss-rate" and "checks" are the threshold strategy's two rules.
Strategy = Annotated[MissRatePolicy | ChecksPolicy | TargetValuePolicy, Field(discriminator="kind")]


class AutoscalingPolicy(BaseModel):
    """A strategy and the limits its answers go through."""

    strategy: Strategy
    gate: ScalingGate = Field(default_factory=ScalingGate)


def decide_scaling(
    strategy: MissRatePolicy | ChecksPolicy | TargetValuePolicy,
    readings: list[Reading],
    count: int,
    gate: ScalingGate,
    state: StrategyState,
    now: datetime,
) -> ScalingDecision:
    """The decision for one round; pure, so a workflow may call it (pass workflow.now())."""
    if isinstance(strategy, MissRatePolicy):
        return decide_miss_rate(readings, count, strategy, gate, state, now)
    if isinstance(strategy, ChecksPolicy):
        return decide_checks(readings, count, strategy, gate, state, now)
    return decide_target_value(readings, count, strategy, gate, state, now)
