"""The shared part of every rule: consecutive readings, bounds, a cooldown per direction
and dry run, applied in that order (the order today's miss-rate rule uses)."""

from __future__ import annotations

from datetime import datetime, timedelta

from scaleflow.core.autoscale import clip
from scaleflow.core.autoscaling.decision import (
    Proposal,
    Rule,
    ScaleDirection,
    ScalingDecision,
    ScalingGate,
    StrategyState,
)


def _at(t: datetime) -> str:
    return t.isoformat(timespec="seconds")


def settle(
    proposal: Proposal,
    count: int,
    gate: ScalingGate,
    state: StrategyState,
    now: datetime,
    rule: Rule,
) -> ScalingDecision:
    """Turn a rule's proposal into a decision; pure (``now`` is passed in)."""
    st = state.model_copy()
    text = proposal.text

    def answer(reason: str, new: int | None = None) -> ScalingDecision:
        return ScalingDecision(
            count=new,
            direction=proposal.direction,
            reason=reason,
            rule=rule,
            readings=proposal.readings,
            state=st,
            acted=new is not None and not gate.dry_run,
        )

    if proposal.direction is ScaleDirection.NONE:
        st.streak_side, st.streak = None, 0
        return answer(text)
    side = proposal.direction.value
    st.streak = st.streak + 1 if st.streak_side == side else 1
    st.streak_side = side
    if st.streak < gate.consecutive:
        return answer(f"{text}; reading {st.streak} of {gate.consecutive}")

    growing = proposal.direction is ScaleDirection.OUT
    bound = f"max {gate.max_count}" if growing else f"min {gate.min_count}"
    target = clip(proposal.target, gate.min_count, gate.max_count)
    # Never move against the rule: a count already past a bound stays where it is.
    if (growing and target <= count) or (not growing and target >= count):
        return answer(f"{text}; held at {count}: {bound}")

    wait = timedelta(seconds=gate.cooldown_out_s if growing else gate.cooldown_in_s)
    if st.last_resize is not None and now < st.last_resize + wait:
        last = st.last_direction.value if st.last_direction else "resize"
        return answer(
            f"{text}; held: {side} cooldown until {_at(st.last_resize + wait)} "
            f"(last {last} at {_at(st.last_resize)})"
        )

    st.last_resize, st.last_direction, st.streak = now, proposal.direction, 0
    reason = text
    if target != proposal.target:
        reason += f", clipped to {target} ({bound})"
    if gate.dry_run:
        reason += "; dry run: not queued"
    return answer(reason, target)
