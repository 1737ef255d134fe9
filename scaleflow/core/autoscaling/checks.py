"""Chemtrail's checks (the threshold strategy's second rule).

Each enabled check compares a resource's reading (cpu or memory, in percent) with its
percentage and, when it holds, asks for its action. When checks disagree scale-out wins
(as in Chemtrail); the policy's ScaleOutCount / ScaleInCount give the step.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

from scaleflow.core.autoscaling.decision import (
    Proposal,
    ScaleDirection,
    ScalingDecision,
    ScalingGate,
    StrategyState,
)
from scaleflow.core.autoscaling.gate import settle
from scaleflow.core.autoscaling.policy_settings import Check
from scaleflow.core.autoscaling.readings import Reading, latest

if TYPE_CHECKING:
    from scaleflow.core.models import PoolConfig

OPERATORS: dict[str, tuple[str, Callable[[float, float], bool]]] = {
    "greater-than": (">", operator.gt),
    "less-than": ("<", operator.lt),
}


class ChecksPolicy(BaseModel):
    kind: Literal["checks"] = "checks"
    checks: dict[str, Check] = Field(default_factory=dict)
    scale_out_count: int = Field(default=1, ge=1, le=100)
    scale_in_count: int = Field(default=1, ge=1, le=100)

    @classmethod
    def for_pool(cls, cfg: PoolConfig) -> ChecksPolicy:
        return cls(
            checks=cfg.checks,
            scale_out_count=cfg.scale_out_count,
            scale_in_count=cfg.scale_in_count,
        )


def propose_checks(readings: list[Reading], count: int, policy: ChecksPolicy) -> Proposal:
    """The checks' raw answer; checks are taken in name order, so the reason does not
    depend on the order the policy listed them in."""
    outs: list[str] = []
    ins: list[str] = []
    missing: list[str] = []
    used: list[Reading] = []
    for name in sorted(policy.checks):
        check = policy.checks[name]
        if not check.enabled:
            continue
        reading = latest(readings, check.resource)
        if reading is None:
            missing.append(f"check {name}: no {check.resource} reading")
            continue
        if reading not in used:
            used.append(reading)
        symbol, holds = OPERATORS[check.comparison_operator]
        if not holds(reading.value, check.comparison_percentage):
            continue
        growing = check.action == ScaleDirection.OUT.value
        step = policy.scale_out_count if growing else policy.scale_in_count
        line = (
            f"check {name}: {reading.text} {symbol} {check.comparison_percentage:g}% "
            f"-> {check.action} by {step}"
        )
        (outs if growing else ins).append(line)
    if outs:
        text = "; ".join(outs)
        if ins:
            text += f" (scale-out wins over {'; '.join(ins)})"
        return Proposal(
            direction=ScaleDirection.OUT,
            target=count + policy.scale_out_count,
            text=text,
            readings=used,
        )
    if ins:
        return Proposal(
            direction=ScaleDirection.IN,
            target=count - policy.scale_in_count,
            text="; ".join(ins),
            readings=used,
        )
    if not any(c.enabled for c in policy.checks.values()):
        text = "no enabled checks"
    else:
        text = "no check fired: " + (", ".join(r.text for r in used) or "no readings")
    if missing:
        text += f" ({'; '.join(missing)})"
    return Proposal(direction=ScaleDirection.NONE, target=count, text=text, readings=used)


def decide_checks(
    readings: list[Reading],
    count: int,
    policy: ChecksPolicy,
    gate: ScalingGate,
    state: StrategyState,
    now: datetime,
) -> ScalingDecision:
    proposal = propose_checks(readings, count, policy)
    return settle(proposal, count, gate, state, now, "threshold/checks")
