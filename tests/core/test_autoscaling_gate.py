"""The limits every rule's answer goes through: consecutive readings, bounds, a cooldown
per direction, and dry run (pure)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from scaleflow.core.autoscaling.checks import ChecksPolicy, decide_checks
from scaleflow.core.autoscaling.decision import (
    Proposal,
    ScaleDirection,
    ScalingDecision,
    ScalingGate,
    StrategyState,
)
from scaleflow.core.autoscaling.gate import settle
from scaleflow.core.models import Check
from tests.core.autoscaling_helpers import T0, later, pct

OUT, IN, NONE = ScaleDirection.OUT, ScaleDirection.IN, ScaleDirection.NONE
COUNT = 5


def proposal(direction: ScaleDirection, count: int = COUNT) -> Proposal:
    step = {OUT: 1, IN: -1, NONE: 0}[direction]
    return Proposal(direction=direction, target=count + step, text=f"asked {direction.value}")


def step(
    direction: ScaleDirection, gate: ScalingGate, state: StrategyState, seconds: float = 0
) -> ScalingDecision:
    return settle(proposal(direction), COUNT, gate, state, later(seconds), "threshold/checks")


def test_consecutive_readings() -> None:
    gate = ScalingGate(max_count=10, consecutive=3)
    state = StrategyState()
    reasons = []
    for _ in range(3):
        d = step(OUT, gate, state)
        state = d.state
        reasons.append((d.count, d.reason))
    assert reasons == [
        (None, "asked scale-out; reading 1 of 3"),
        (None, "asked scale-out; reading 2 of 3"),
        (6, "asked scale-out"),
    ]
    # Acting starts the count again.
    assert state.streak == 0


def test_a_reading_on_the_other_side_or_within_starts_again() -> None:
    gate = ScalingGate(max_count=10, consecutive=2)
    s1 = step(OUT, gate, StrategyState()).state
    assert step(IN, gate, s1).reason == "asked scale-in; reading 1 of 2"
    s2 = step(NONE, gate, s1).state
    assert (s2.streak, s2.streak_side) == (0, None)
    assert step(OUT, gate, s2).count is None


def test_separate_cooldowns() -> None:
    gate = ScalingGate(max_count=10, cooldown_out_s=60, cooldown_in_s=600)
    grown = step(OUT, gate, StrategyState())
    assert grown.count == 6
    # A scale-in waits its own (longer) cooldown after the scale-out ...
    held = step(IN, gate, grown.state, 300)
    assert held.count is None
    assert held.direction is IN
    assert held.reason == (
        "asked scale-in; held: scale-in cooldown until 2024-05-01T12:10:00+00:00 "
        "(last scale-out at 2024-05-01T12:00:00+00:00)"
    )
    # ... while a scale-out only waits 60 s.
    assert step(OUT, gate, grown.state, 59).count is None
    assert step(OUT, gate, grown.state, 60).count == 6
    assert step(IN, gate, grown.state, 600).count == 4


def test_dry_run() -> None:
    live = ScalingGate(max_count=10)
    dry = ScalingGate(max_count=10, dry_run=True)
    d = step(OUT, dry, StrategyState())
    assert (d.count, d.acted, d.reason) == (6, False, "asked scale-out; dry run: not queued")
    # The state advances as the live one would, so cooldowns show as they would live.
    assert d.state == step(OUT, live, StrategyState()).state
    assert step(OUT, live, StrategyState()).acted is True


def test_dry_run_through_the_checks_rule() -> None:
    policy = ChecksPolicy(
        checks={
            "cpu-high": Check(
                resource="cpu",
                comparison_operator="greater-than",
                comparison_percentage=80,
                action="scale-out",
            )
        }
    )
    d = decide_checks(
        [pct("cpu", 83)], 2, policy, ScalingGate(max_count=4, dry_run=True), StrategyState(), T0
    )
    assert d.reason == "check cpu-high: cpu 83.0% > 80% -> scale-out by 1; dry run: not queued"
    assert (d.count, d.acted) == (3, False)


sides = st.sampled_from([OUT, IN, NONE])


@given(st.lists(sides, min_size=1, max_size=30), st.integers(1, 4))
def test_acts_exactly_after_n_readings_on_one_side(seq: list[ScaleDirection], n: int) -> None:
    gate = ScalingGate(max_count=100, consecutive=n)
    state = StrategyState()
    last_act = -1
    for i, side in enumerate(seq):
        d = step(side, gate, state)
        state = d.state
        window = seq[i - n + 1 : i + 1] if i + 1 >= n else []
        # The last n readings are on this side, and none of them led to a resize yet.
        due = (
            side is not NONE and len(window) == n and set(window) == {side} and last_act < i - n + 1
        )
        assert (d.count is not None) == due, (i, seq, n)
        if d.count is not None:
            last_act = i


@given(
    st.lists(st.tuples(sides, st.integers(0, 400)), min_size=1, max_size=25),
    st.integers(0, 300),
    st.integers(0, 900),
)
def test_cooldowns_are_honoured_on_each_side(
    seq: list[tuple[ScaleDirection, int]], cool_out: int, cool_in: int
) -> None:
    gate = ScalingGate(max_count=100, cooldown_out_s=cool_out, cooldown_in_s=cool_in)
    wait = {OUT: cool_out, IN: cool_in}
    state = StrategyState()
    now = 0
    last: int | None = None
    for side, gap in seq:
        now += gap
        d = step(side, gate, state, now)
        state = d.state
        if side is NONE:
            assert d.count is None
            continue
        due = last is None or now >= last + wait[side]
        assert (d.count is not None) == due
        if d.count is not None:
            last = now


@given(st.integers(0, 30), sides, st.integers(0, 10), st.integers(0, 30))
def test_bounds_hold_whatever_the_proposal(
    count: int, side: ScaleDirection, low: int, span: int
) -> None:
    gate = ScalingGate(min_count=low, max_count=low + span)
    target = {OUT: count + 7, IN: count - 7, NONE: count}[side]
    p = Proposal(direction=side, target=target, text="t")
    d = settle(p, count, gate, StrategyState(), T0, "target-value")
    if d.count is not None:
        assert gate.min_count <= d.count <= gate.max_count
        assert (d.count > count) == (side is OUT)
