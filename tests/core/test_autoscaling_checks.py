"""Chemtrail's checks, the threshold strategy's second rule (pure)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from scaleflow.api.schemas.chemtrail import Policy
from scaleflow.core.autoscaling.checks import ChecksPolicy, decide_checks, propose_checks
from scaleflow.core.autoscaling.decision import (
    ScaleDirection,
    ScalingDecision,
    ScalingGate,
    StrategyState,
)
from scaleflow.core.autoscaling.readings import Reading
from scaleflow.core.models import Check
from tests.core.autoscaling_helpers import T0, counts, gates, later, pct, percentages, states


def check(resource: str, op: str, percent: float, action: str, enabled: bool = True) -> Check:
    return Check.model_validate(
        {
            "enabled": enabled,
            "resource": resource,
            "comparison_operator": op,
            "comparison_percentage": percent,
            "action": action,
        }
    )


CHECKS = {
    "cpu-high": check("cpu", "greater-than", 80, "scale-out"),
    "cpu-low": check("cpu", "less-than", 20, "scale-in"),
    "mem-high": check("memory", "greater-than", 90, "scale-out"),
    "mem-low": check("memory", "less-than", 30, "scale-in"),
}
POLICY = ChecksPolicy(checks=CHECKS, scale_out_count=2, scale_in_count=1)
GATE = ScalingGate(min_count=1, max_count=10)


def run(
    readings: list[Reading],
    count: int = 4,
    policy: ChecksPolicy = POLICY,
    gate: ScalingGate = GATE,
) -> ScalingDecision:
    return decide_checks(readings, count, policy, gate, StrategyState(), T0)


def test_one_check_fires() -> None:
    one = ChecksPolicy(checks={"cpu-high": CHECKS["cpu-high"]})
    d = run([pct("cpu", 83), pct("memory", 50)], policy=one)
    assert d.reason == "check cpu-high: cpu 83.0% > 80% -> scale-out by 1"
    assert (d.count, d.direction, d.acted, d.rule) == (
        5,
        ScaleDirection.OUT,
        True,
        "threshold/checks",
    )
    assert [r.text for r in d.readings] == ["cpu 83.0%"]
    assert d.state.last_resize == T0
    assert d.state.last_direction is ScaleDirection.OUT


def test_scale_in_uses_the_scale_in_step() -> None:
    d = run([pct("cpu", 10), pct("memory", 50)])
    assert d.reason == "check cpu-low: cpu 10.0% < 20% -> scale-in by 1"
    assert (d.count, d.direction) == (3, ScaleDirection.IN)


def test_scale_out_wins_when_checks_disagree() -> None:
    d = run([pct("cpu", 85), pct("memory", 10)])
    assert (d.count, d.direction) == (6, ScaleDirection.OUT)
    assert d.reason == (
        "check cpu-high: cpu 85.0% > 80% -> scale-out by 2 "
        "(scale-out wins over check mem-low: memory 10.0% < 30% -> scale-in by 1)"
    )


def test_several_scale_outs_step_once() -> None:
    d = run([pct("cpu", 95), pct("memory", 95)])
    assert d.count == 6
    assert d.reason == (
        "check cpu-high: cpu 95.0% > 80% -> scale-out by 2; "
        "check mem-high: memory 95.0% > 90% -> scale-out by 2"
    )


def test_nothing_fires() -> None:
    d = run([pct("cpu", 50), pct("memory", 50)])
    assert (d.count, d.direction, d.acted) == (None, ScaleDirection.NONE, False)
    assert d.reason == "no check fired: cpu 50.0%, memory 50.0%"


def test_comparisons_are_strict() -> None:
    assert run([pct("cpu", 80), pct("memory", 30)]).count is None
    assert run([pct("cpu", 20), pct("memory", 90)]).count is None


def test_disabled_checks_and_missing_readings() -> None:
    policy = ChecksPolicy(
        checks={
            "cpu-high": check("cpu", "greater-than", 80, "scale-out", enabled=False),
            "mem-high": CHECKS["mem-high"],
        }
    )
    d = run([pct("cpu", 99)], policy=policy)
    assert d.count is None
    assert d.reason == "no check fired: no readings (check mem-high: no memory reading)"
    assert run([pct("cpu", 99)], policy=ChecksPolicy()).reason == "no enabled checks"


def test_bounds_clip_and_hold() -> None:
    d = run([pct("cpu", 90), pct("memory", 50)], count=9)
    assert d.count == 10
    assert d.reason.endswith("-> scale-out by 2, clipped to 10 (max 10)")
    held = run([pct("cpu", 90), pct("memory", 50)], count=10)
    assert held.count is None
    assert held.direction is ScaleDirection.OUT
    assert held.reason == "check cpu-high: cpu 90.0% > 80% -> scale-out by 2; held at 10: max 10"
    low = run([pct("cpu", 5), pct("memory", 50)], count=1)
    assert (low.count, low.reason.endswith("held at 1: min 1")) == (None, True)


def test_a_count_past_a_bound_never_moves_against_the_rule() -> None:
    # max lowered under the current count: a scale-out must not shrink the pool.
    d = run([pct("cpu", 90), pct("memory", 50)], count=12)
    assert d.count is None


def test_the_policy_of_a_chemtrail_class() -> None:
    policy = Policy.model_validate(
        {
            "MinCount": 1,
            "MaxCount": 5,
            "ScaleOutCount": 2,
            "Provider": "no-op",
            "Checks": {
                "cpu-high": {
                    "Resource": "cpu",
                    "ComparisonOperator": "greater-than",
                    "ComparisonPercentage": 80,
                    "Action": "scale-out",
                }
            },
        }
    )
    cfg = policy.to_config("web")
    d = decide_checks(
        [pct("cpu", 83)],
        2,
        ChecksPolicy.for_pool(cfg),
        ScalingGate.for_pool(cfg),
        StrategyState(),
        T0,
    )
    assert (d.count, d.reason) == (4, "check cpu-high: cpu 83.0% > 80% -> scale-out by 2")


def test_check_order_does_not_matter() -> None:
    readings = [pct("cpu", 85), pct("memory", 95)]
    backwards = ChecksPolicy(checks=dict(reversed(list(CHECKS.items()))), scale_out_count=2)
    assert propose_checks(readings, 4, backwards) == propose_checks(readings, 4, POLICY)


@given(counts, percentages, percentages, gates(), states(), st.integers(0, 900))
def test_the_count_stays_within_bounds(
    count: int, cpu: float, mem: float, gate: ScalingGate, state: StrategyState, t: int
) -> None:
    d = decide_checks([pct("cpu", cpu), pct("memory", mem)], count, POLICY, gate, state, later(t))
    if d.count is not None:
        assert gate.min_count <= d.count <= gate.max_count
        assert d.count != count
        # It moves the way the rule asked.
        assert (d.count > count) == (d.direction is ScaleDirection.OUT)
    assert d.acted == (d.count is not None and not gate.dry_run)


@given(counts, percentages, percentages, gates(), states())
def test_the_same_inputs_give_the_same_decision(
    count: int, cpu: float, mem: float, gate: ScalingGate, state: StrategyState
) -> None:
    readings = [pct("cpu", cpu), pct("memory", mem)]
    before = state.model_copy(deep=True)
    first = decide_checks(readings, count, POLICY, gate, state, T0)
    again = decide_checks(readings, count, POLICY, gate, state, T0)
    assert first == again
    assert state == before  # the state passed in is never changed
