"""nomad-autoscaler's target-value strategy (pure)."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from scaleflow.core.autoscaling.decision import (
    ScaleDirection,
    ScalingDecision,
    ScalingGate,
    StrategyState,
)
from scaleflow.core.autoscaling.readings import Reading
from scaleflow.core.autoscaling.target_value import TargetValuePolicy, decide_target_value
from tests.core.autoscaling_helpers import T0, counts, gates, later, pct, states

POLICY = TargetValuePolicy(metric="cpu", target=60)
WIDE = ScalingGate(min_count=0, max_count=100)


def run(
    value: float,
    count: int,
    policy: TargetValuePolicy = POLICY,
    gate: ScalingGate = WIDE,
) -> ScalingDecision:
    return decide_target_value([pct("cpu", value)], count, policy, gate, StrategyState(), T0)


def test_scales_in_proportion() -> None:
    d = run(90, 4)
    assert (d.count, d.direction, d.rule) == (6, ScaleDirection.OUT, "target-value")
    assert d.reason == (
        "target-value: cpu 90.0% vs target 60.0%: factor 1.500 -> scale-out to ceil(4 * 1.500) = 6"
    )
    down = run(20, 6)
    assert (down.count, down.direction) == (2, ScaleDirection.IN)


def test_rounds_up() -> None:
    assert run(61.5, 10).count == 11  # ceil(10.25)
    assert run(45, 3).count is None  # ceil(3 * 0.75) = 3: no change


def test_floating_point_does_not_add_a_node() -> None:
    # 88 / 80 * 10 is 11.000000000000002 in floating point.
    d = decide_target_value(
        [pct("cpu", 88)], 10, TargetValuePolicy(metric="cpu", target=80), WIDE, StrategyState(), T0
    )
    assert d.count == 11


def test_within_tolerance_nothing_changes() -> None:
    d = run(60.5, 10)
    assert d.count is None
    assert d.direction is ScaleDirection.NONE
    assert d.reason == (
        "target-value: cpu 60.5% vs target 60.0%: factor 1.008 within tolerance 0.01"
    )
    wider = TargetValuePolicy(metric="cpu", target=60, tolerance=0.1)
    assert run(65, 10, wider).count is None
    assert run(67, 10, wider).count == 12


def test_from_zero_and_to_a_zero_target() -> None:
    queue = TargetValuePolicy(metric="queue", target=0)
    got = decide_target_value(
        [Reading(metric="queue", value=3, source="prometheus")],
        0,
        queue,
        WIDE,
        StrategyState(),
        T0,
    )
    # A target of 0 takes the metric as the factor; from 0 the count is ceil(factor).
    assert got.count == 3
    assert (
        got.reason
        == "target-value: queue 3 vs target 0: factor 3.000 -> scale-out to ceil(3.000) = 3"
    )
    empty = decide_target_value(
        [Reading(metric="queue", value=0, source="prometheus")],
        0,
        queue,
        WIDE,
        StrategyState(),
        T0,
    )
    assert empty.count is None


def test_no_reading_of_the_metric() -> None:
    d = decide_target_value([pct("memory", 99)], 3, POLICY, WIDE, StrategyState(), T0)
    assert (d.count, d.reason) == (None, "target-value: no cpu reading")


def test_bounds_clip() -> None:
    d = run(600, 4, gate=ScalingGate(min_count=1, max_count=8))
    assert d.count == 8
    assert d.reason.endswith("= 40, clipped to 8 (max 8)")
    assert run(1, 4, gate=ScalingGate(min_count=2, max_count=8)).count == 2


def test_a_huge_factor_stays_finite() -> None:
    tiny = TargetValuePolicy(metric="cpu", target=1e-300)
    assert run(100, 4, tiny, ScalingGate(min_count=0, max_count=50)).count == 50


values = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
targets = st.floats(min_value=0, max_value=1e4, allow_nan=False)


@given(counts, values, targets, st.sampled_from([0, 0.01, 0.2]), gates(), states())
def test_the_count_stays_within_bounds(
    count: int,
    value: float,
    target: float,
    tolerance: float,
    gate: ScalingGate,
    state: StrategyState,
) -> None:
    policy = TargetValuePolicy(metric="m", target=target, tolerance=tolerance)
    reading = Reading(metric="m", value=value, source="prometheus")
    d = decide_target_value([reading], count, policy, gate, state, later(0))
    if d.count is not None:
        assert gate.min_count <= d.count <= gate.max_count
        assert (d.count > count) == (d.direction is ScaleDirection.OUT)
    if count > 0 and target > 0 and abs(value / target - 1) <= tolerance:
        assert d.direction is ScaleDirection.NONE


@given(st.integers(1, 50), st.floats(0, 1000, allow_nan=False), st.floats(1, 100))
def test_the_rule_without_limits_is_ceil_of_the_ratio(
    count: int, value: float, target: float
) -> None:
    policy = TargetValuePolicy(metric="cpu", target=target, tolerance=0)
    d = decide_target_value([pct("cpu", value)], count, policy, ScalingGate(), StrategyState(), T0)
    expected = math.ceil(round(count * value / target, 9))
    assert d.count == (None if expected == count else min(expected, 10_000))


@given(counts, values, targets, gates(), states())
def test_the_same_inputs_give_the_same_decision(
    count: int, value: float, target: float, gate: ScalingGate, state: StrategyState
) -> None:
    policy = TargetValuePolicy(metric="m", target=target)
    readings = [Reading(metric="m", value=value, source="prometheus")]
    first = decide_target_value(readings, count, policy, gate, state, T0)
    assert decide_target_value(readings, count, policy, gate, state, T0) == first
