"""The seeds' miss-rate rule: today's ``decide`` pinned, and the shared-shape adapter
giving exactly its answers (pure)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from scaleflow.core.autoscale import AutoscalerConfig, AutoscalerState, StatsSample, decide
from scaleflow.core.autoscaling.decision import ScaleDirection, ScalingGate, StrategyState
from scaleflow.core.autoscaling.miss_rate import MissRatePolicy, decide_miss_rate
from scaleflow.core.autoscaling.readings import MISS_RATE, Reading, miss_rate_reading
from scaleflow.core.autoscaling.strategies import AutoscalingPolicy, decide_scaling
from tests.core.autoscaling_helpers import T0, later


def rate(value: float) -> Reading:
    return Reading(metric=MISS_RATE, value=value, unit="ratio", source="memcached")


def test_decide_as_today() -> None:
    cfg = AutoscalerConfig()
    grow = decide(4, 0.7, cfg, AutoscalerState(), T0, 1, 8)
    assert (grow.size, grow.reason) == (
        6,
        "miss rate 0.700 > max 0.6: clip(round(4 * 1.5), 1, 8) = 6",
    )
    shrink = decide(4, 0.1, cfg, AutoscalerState(), T0, 1, 8)
    assert shrink.size == 2
    same = decide(4, 0.5, cfg, AutoscalerState(), T0, 1, 8)
    assert (same.size, same.reason) == (None, "miss rate 0.500 within thresholds")
    repeat = decide(4, 0.7, cfg, grow.state, later(60), 1, 8)
    assert (repeat.size, repeat.reason) == (None, "miss rate 0.700 repeats: skipped")


def test_the_adapter_names_the_move() -> None:
    d = decide_miss_rate(
        [rate(0.7)], 4, MissRatePolicy(), ScalingGate(min_count=1, max_count=8), StrategyState(), T0
    )
    assert (d.count, d.direction, d.rule, d.acted) == (
        6,
        ScaleDirection.OUT,
        "threshold/miss-rate",
        True,
    )
    assert d.reason == "miss rate 0.700 > max 0.6: clip(round(4 * 1.5), 1, 8) = 6"
    assert d.state.last_direction is ScaleDirection.OUT
    dry = decide_miss_rate(
        [rate(0.7)],
        4,
        MissRatePolicy(),
        ScalingGate(min_count=1, max_count=8, dry_run=True),
        StrategyState(),
        T0,
    )
    assert (dry.count, dry.acted) == (6, False)
    assert dry.reason.endswith("; dry run: not queued")


def test_no_reading() -> None:
    d = decide_miss_rate([], 4, MissRatePolicy(), ScalingGate(), StrategyState(), T0)
    assert (d.count, d.reason) == (None, "no miss_rate reading")


def test_todays_sample_as_a_reading() -> None:
    sample = StatsSample(at=T0, gets=200, hits=150, misses=50, nodes=2)
    r = miss_rate_reading(sample)
    assert (r.metric, r.value, r.source, r.text) == (
        MISS_RATE,
        0.25,
        "memcached",
        "miss rate 0.250",
    )
    cw = miss_rate_reading(sample.model_copy(update={"cloudwatch_miss_rate": 0.5}))
    assert (cw.value, cw.source) == (0.5, "cloudwatch")


def test_the_policy_document_round_trips() -> None:
    doc = {
        "strategy": {"kind": "target-value", "metric": "cpu", "target": 70},
        "gate": {"min_count": 1, "max_count": 9, "cooldown_in_s": 600, "dry_run": True},
    }
    policy = AutoscalingPolicy.model_validate(doc)
    assert policy.strategy.kind == "target-value"
    assert AutoscalingPolicy.model_validate(policy.model_dump()) == policy


configs = st.builds(
    AutoscalerConfig,
    max_miss_rate_threshold=st.sampled_from([0.5, 0.6, 0.9]),
    min_miss_rate_threshold=st.sampled_from([0.1, 0.4]),
    expand_ratio=st.sampled_from([1.5, 2.0]),
    shrink_ratio=st.sampled_from([0.5, 0.75]),
    cooldown_s=st.sampled_from([0, 120]),
    consecutive=st.integers(1, 3),
    skip_identical=st.booleans(),
)
rates = st.sampled_from([0.0, 0.2, 0.45, 0.55, 0.7, 0.95])


@given(
    configs,
    st.lists(st.tuples(rates, st.integers(0, 200)), min_size=1, max_size=20),
    st.integers(0, 20),
    st.integers(1, 5),
    st.integers(0, 20),
)
def test_the_adapter_answers_as_decide(
    cfg: AutoscalerConfig,
    seq: list[tuple[float, int]],
    size: int,
    low: int,
    span: int,
) -> None:
    high = low + span
    gate = ScalingGate(min_count=low, max_count=high)
    policy = MissRatePolicy(config=cfg)
    legacy, shared = AutoscalerState(), StrategyState()
    now = 0
    for value, gap in seq:
        now += gap
        want = decide(size, value, cfg, legacy, later(now), low, high)
        got = decide_scaling(policy, [rate(value)], size, gate, shared, later(now))
        assert (got.count, got.reason) == (want.size, want.reason)
        assert got.state.model_dump(include=set(AutoscalerState.model_fields)) == (
            want.state.model_dump()
        )
        if got.count is not None:
            assert low <= got.count <= high
            size = got.count
        legacy, shared = want.state, got.state
