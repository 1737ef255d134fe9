"""Builders and hypothesis strategies shared by the autoscaling strategy tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import strategies as st

from scaleflow.core.autoscaling.decision import ScalingGate, StrategyState
from scaleflow.core.autoscaling.readings import Reading

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def pct(metric: str, value: float, source: str = "nomad") -> Reading:
    return Reading(metric=metric, value=value, unit="%", source=source)


def later(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


percentages = st.floats(min_value=0, max_value=100, allow_nan=False)
counts = st.integers(min_value=0, max_value=60)


@st.composite
def gates(draw: st.DrawFn) -> ScalingGate:
    low = draw(st.integers(min_value=0, max_value=20))
    high = draw(st.integers(min_value=low, max_value=50))
    return ScalingGate(
        min_count=low,
        max_count=high,
        cooldown_out_s=draw(st.sampled_from([0, 60, 300])),
        cooldown_in_s=draw(st.sampled_from([0, 120, 600])),
        consecutive=draw(st.integers(min_value=1, max_value=3)),
        dry_run=draw(st.booleans()),
    )


@st.composite
def states(draw: st.DrawFn) -> StrategyState:
    side = draw(st.sampled_from([None, "scale-out", "scale-in"]))
    last = draw(st.none() | st.integers(min_value=-900, max_value=0).map(later))
    return StrategyState(
        streak_side=side,
        streak=0 if side is None else draw(st.integers(min_value=0, max_value=3)),
        last_resize=last,
    )
