"""The seeds' miss-rate rule (the threshold strategy's first rule) in the shared shape.

The rule itself stays :func:`scaleflow.core.autoscale.decide`, called as is, so its
behaviour (ratios, its one cooldown, streaks, skipping a repeated reading) is unchanged;
this only reads the reading, and adds the direction, the rule's name and dry run.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from scaleflow.core.autoscale import AutoscalerConfig, AutoscalerState, decide
from scaleflow.core.autoscaling.decision import (
    Rule,
    ScaleDirection,
    ScalingDecision,
    ScalingGate,
    StrategyState,
)
from scaleflow.core.autoscaling.readings import MISS_RATE, Reading, latest

RULE: Rule = "threshold/miss-rate"


class MissRatePolicy(BaseModel):
    """The rule's own settings; it keeps its own cooldown and consecutive count, so of
    the gate only the bounds and dry run apply."""

    kind: Literal["miss-rate"] = "miss-rate"
    config: AutoscalerConfig = Field(default_factory=AutoscalerConfig)


def _asked(rate: float, cfg: AutoscalerConfig, state: StrategyState) -> ScaleDirection:
    """The side ``decide`` takes for this rate (the same tests, in the same order)."""
    rate = round(rate, 6)
    if cfg.skip_identical and state.last_rate is not None and rate == state.last_rate:
        return ScaleDirection.NONE
    if rate > cfg.max_miss_rate_threshold:
        return ScaleDirection.OUT
    if rate < cfg.min_miss_rate_threshold:
        return ScaleDirection.IN
    return ScaleDirection.NONE


def decide_miss_rate(
    readings: list[Reading],
    count: int,
    policy: MissRatePolicy,
    gate: ScalingGate,
    state: StrategyState,
    now: datetime,
) -> ScalingDecision:
    reading = latest(readings, MISS_RATE)
    if reading is None:
        return ScalingDecision(
            count=None,
            direction=ScaleDirection.NONE,
            reason="no miss_rate reading",
            rule=RULE,
            state=state,
        )
    cfg = policy.config
    before = AutoscalerState.model_validate(
        state.model_dump(include=set(AutoscalerState.model_fields))
    )
    got = decide(count, reading.value, cfg, before, now, gate.min_count, gate.max_count)
    direction = _asked(reading.value, cfg, state)
    st = state.model_copy(update=got.state.model_dump())
    reason = got.reason
    if got.size is not None:
        # decide clips to the bounds, so a count past them moves back inside.
        direction = ScaleDirection.OUT if got.size > count else ScaleDirection.IN
        st.last_direction = direction
        if gate.dry_run:
            reason += "; dry run: not queued"
    return ScalingDecision(
        count=got.size,
        direction=direction,
        reason=reason,
        rule=RULE,
        readings=[reading],
        state=st,
        acted=got.size is not None and not gate.dry_run,
    )
