"""What every autoscaling rule answers, and the limits and state the rules share."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field, model_validator

from scaleflow.core.autoscaling.readings import Reading

if TYPE_CHECKING:  # core.models holds the pool's decisions: no import at run time
    from scaleflow.core.models import PoolConfig


class ScaleDirection(StrEnum):
    OUT = "scale-out"
    IN = "scale-in"
    NONE = "none"


# Which rule decided: the threshold strategy has two (the seeds' miss-rate rule and
# Chemtrail's checks); target-value is nomad-autoscaler's.
Rule = Literal["threshold/miss-rate", "threshold/checks", "target-value"]


class ScalingGate(BaseModel):
    """The limits a rule's answer goes through before it becomes a resize."""

    min_count: int = Field(default=0, ge=0, le=10_000)
    max_count: int = Field(default=10_000, ge=0, le=10_000)
    # Separate cooldowns, each counted from the last resize in either direction: growing
    # should follow load soon after any change, shrinking only once the last one settled.
    cooldown_out_s: float = Field(default=0.0, ge=0, le=86_400)
    cooldown_in_s: float = Field(default=0.0, ge=0, le=86_400)
    # Readings in a row on the same side before acting (one spike is not a trend).
    consecutive: int = Field(default=1, ge=1, le=100)
    # Decide as usual (the state advances as if the resize ran, so the log shows what
    # the live autoscaler would do), but tell the caller not to queue it.
    dry_run: bool = False

    @model_validator(mode="after")
    def _bounds(self) -> ScalingGate:
        if self.min_count > self.max_count:
            raise ValueError(
                f"min_count ({self.min_count}) must not exceed max_count ({self.max_count})"
            )
        return self

    @classmethod
    def for_pool(cls, cfg: PoolConfig, **limits: Any) -> ScalingGate:
        """The pool's bounds (MinCount, MaxCount) with the given cooldowns and so on."""
        return cls(min_count=cfg.min_count, max_count=cfg.max_count, **limits)


class StrategyState(BaseModel):
    """What a rule remembers between rounds; the pool keeps it across continue-as-new."""

    # The side of the last readings ("scale-out"/"scale-in"; the miss-rate rule says
    # "expand"/"shrink") and how many in a row.
    streak_side: str | None = None
    streak: int = 0
    last_resize: datetime | None = None
    last_direction: ScaleDirection | None = None
    # The miss-rate rule's last rate (it skips a repeat); unused by the other rules.
    last_rate: float | None = None


class ScalingDecision(BaseModel):
    """A rule's answer to one round of readings."""

    # The new count, or None to stay (the rule found nothing, or a limit held it).
    count: int | None
    # What the rule asked for, even when a limit held it (count is then None).
    direction: ScaleDirection
    # "check cpu-high: cpu 83.0% > 80% -> scale-out by 1", and why it was held if it was.
    reason: str
    rule: Rule
    readings: list[Reading] = Field(default_factory=list)
    state: StrategyState
    # True when count is set and this is no dry run: the caller may queue the resize.
    acted: bool = False


class Proposal(BaseModel):
    """A rule's raw answer, before the gate: the direction and count it asks for."""

    direction: ScaleDirection
    # The count asked for, before bounds.
    target: int
    text: str
    readings: list[Reading] = Field(default_factory=list)


class DecisionRecord(BaseModel):
    """One round of a pool's autoscaler, as ``GET /v1/pools/{name}/decisions`` lists it."""

    at: datetime
    rule: str
    # "cpu 83.0%, memory 41.2%": what was read (and from where).
    reading: str
    source: str
    # The rule's answer: what it asked for and, if held, why.
    result: str
    direction: ScaleDirection
    count: int
    # The count the rule settled on; None when it stays.
    new_count: int | None = None
    # Queued as an operation (not held, not a dry run, not skipped).
    acted: bool = False
    dry_run: bool = False
    operation: str | None = None
