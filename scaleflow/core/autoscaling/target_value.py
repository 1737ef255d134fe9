"""nomad-autoscaler's target-value strategy: keep a metric at a target by scaling the
count in proportion, new count = ceil(count * metric / target).

As there: no change while the factor metric/target is within ``tolerance`` of 1 (its
"precision", default 0.01); a target of 0 uses the metric itself as the factor (scale a
build queue to empty); from a count of 0 the new count is ceil(factor).
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from scaleflow.core.autoscaling.decision import (
    Proposal,
    ScaleDirection,
    ScalingDecision,
    ScalingGate,
    StrategyState,
)
from scaleflow.core.autoscaling.gate import settle
from scaleflow.core.autoscaling.readings import Reading, format_value, latest

# Beyond any bound (counts are at most 10,000): keeps ceil() finite for a huge factor.
_FAR = 1e9


def _ceil(x: float) -> int:
    # Rounded first: 10 * (88 / 80) is 11.000000000000002 in floating point, not 11.
    return math.ceil(max(-_FAR, min(_FAR, round(x, 9))))


class TargetValuePolicy(BaseModel):
    kind: Literal["target-value"] = "target-value"
    metric: str = Field(min_length=1)
    target: float = Field(ge=0, le=1e12, allow_inf_nan=False)
    tolerance: float = Field(default=0.01, ge=0, le=1, allow_inf_nan=False)


def propose_target_value(
    readings: list[Reading], count: int, policy: TargetValuePolicy
) -> Proposal:
    reading = latest(readings, policy.metric)
    if reading is None:
        return Proposal(
            direction=ScaleDirection.NONE,
            target=count,
            text=f"target-value: no {policy.metric} reading",
        )
    factor = reading.value if policy.target == 0 else reading.value / policy.target
    head = f"target-value: {reading.text} vs target {format_value(policy.target, reading.unit)}"

    def stay(why: str) -> Proposal:
        return Proposal(
            direction=ScaleDirection.NONE, target=count, text=f"{head}: {why}", readings=[reading]
        )

    if count == 0:
        if factor <= 0:
            return stay(f"factor {factor:.3f}, nothing to scale from 0")
        formula = f"ceil({factor:.3f})"
        new = _ceil(factor)
    else:
        if abs(factor - 1) <= policy.tolerance:
            return stay(f"factor {factor:.3f} within tolerance {policy.tolerance:g}")
        formula = f"ceil({count} * {factor:.3f})"
        new = _ceil(count * factor)
    if new == count:
        return stay(f"factor {factor:.3f}, {formula} = {count}: no change")
    direction = ScaleDirection.OUT if new > count else ScaleDirection.IN
    return Proposal(
        direction=direction,
        target=new,
        text=f"{head}: factor {factor:.3f} -> {direction.value} to {formula} = {new}",
        readings=[reading],
    )


def decide_target_value(
    readings: list[Reading],
    count: int,
    policy: TargetValuePolicy,
    gate: ScalingGate,
    state: StrategyState,
    now: datetime,
) -> ScalingDecision:
    proposal = propose_target_value(readings, count, policy)
    return settle(proposal, count, gate, state, now, "target-value")
