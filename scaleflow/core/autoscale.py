"""The miss-rate autoscaler: configuration, readings, and the decision rule.

Rule (the auto-scaler seed): above ``max_miss_rate_threshold`` the pool grows to
``clip(round(size * expand_ratio), min, max)``; below ``min_miss_rate_threshold``
it shrinks to ``clip(round(size * shrink_ratio), min, max)``. Options: a cooldown
after a resize (one for each direction, if set), a number of consecutive readings on
the same side, and skipping a reading identical to the previous one (the original did,
against CloudWatch lag).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import BaseModel, Field, model_validator


class AutoscalerConfig(BaseModel):
    max_miss_rate_threshold: float = Field(default=0.6, ge=0, le=1)
    min_miss_rate_threshold: float = Field(default=0.4, ge=0, le=1)
    expand_ratio: float = Field(default=1.5, gt=1, le=100)
    shrink_ratio: float = Field(default=0.5, gt=0, lt=1)
    auto_mode: bool = False
    interval_s: float = Field(default=60.0, ge=1, le=86_400)
    cooldown_s: float = Field(default=0.0, ge=0, le=86_400)
    # A cooldown per direction, each counted from the last resize; unset: cooldown_s.
    cooldown_out_s: float | None = Field(default=None, ge=0, le=86_400)
    cooldown_in_s: float | None = Field(default=None, ge=0, le=86_400)
    consecutive: int = Field(default=1, ge=1, le=100)
    skip_identical: bool = True
    # Read the miss rate from CloudWatch (and publish the nodes' figures there).
    cloudwatch: bool = False
    # Decide and record, but queue nothing.
    dry_run: bool = False

    def cooldown(self, side: str) -> float:
        """The cooldown before a resize to ``side`` ("expand" or "shrink")."""
        own = self.cooldown_out_s if side == "expand" else self.cooldown_in_s
        return self.cooldown_s if own is None else own

    @model_validator(mode="after")
    def _thresholds(self) -> AutoscalerConfig:
        if self.min_miss_rate_threshold >= self.max_miss_rate_threshold:
            raise ValueError(
                f"min_miss_rate_threshold ({self.min_miss_rate_threshold}) must be less than "
                f"max_miss_rate_threshold ({self.max_miss_rate_threshold})"
            )
        return self


class NodeCounters(BaseModel):
    """A node's cumulative counters from ``stats``."""

    cmd_get: int = 0
    get_hits: int = 0
    get_misses: int = 0
    curr_items: int = 0
    bytes: int = 0


class StatsSample(BaseModel):
    """One interval of the pool's own counters (deltas of the nodes' ``stats``)."""

    at: datetime
    gets: int = 0
    hits: int = 0
    misses: int = 0
    items: int = 0
    bytes: int = 0
    nodes: int = 0
    seconds: float = 60.0
    cloudwatch_miss_rate: float | None = None

    @property
    def miss_rate(self) -> float:
        # With no traffic the original counts the miss rate as 0 (and so shrinks).
        return self.misses / self.gets if self.gets else 0.0

    @property
    def hit_rate(self) -> float:
        return self.hits / self.gets if self.gets else 0.0

    @property
    def requests_per_minute(self) -> float:
        return self.gets * 60.0 / self.seconds if self.seconds else 0.0


class AutoscalerState(BaseModel):
    last_rate: float | None = None
    streak_side: str | None = None
    streak: int = 0
    last_resize: datetime | None = None


class Decision(BaseModel):
    size: int | None  # the new size, or None to stay
    reason: str
    state: AutoscalerState


def clip(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


def decide(
    size: int,
    miss_rate: float,
    cfg: AutoscalerConfig,
    state: AutoscalerState,
    now: datetime,
    low: int,
    high: int,
) -> Decision:
    """What the autoscaler does with one reading; pure, so workflows can call it."""
    rate = round(miss_rate, 6)
    st = state.model_copy()
    if cfg.skip_identical and st.last_rate is not None and rate == st.last_rate:
        st.last_rate = None  # skip one round only
        return Decision(size=None, reason=f"miss rate {rate:.3f} repeats: skipped", state=st)
    st.last_rate = rate
    if rate > cfg.max_miss_rate_threshold:
        side, target = "expand", clip(round(size * cfg.expand_ratio), low, high)
        rule = (
            f"miss rate {rate:.3f} > max {cfg.max_miss_rate_threshold}: "
            f"clip(round({size} * {cfg.expand_ratio}), {low}, {high}) = {target}"
        )
    elif rate < cfg.min_miss_rate_threshold:
        side, target = "shrink", clip(round(size * cfg.shrink_ratio), low, high)
        rule = (
            f"miss rate {rate:.3f} < min {cfg.min_miss_rate_threshold}: "
            f"clip(round({size} * {cfg.shrink_ratio}), {low}, {high}) = {target}"
        )
    else:
        st.streak_side, st.streak = None, 0
        return Decision(size=None, reason=f"miss rate {rate:.3f} within thresholds", state=st)
    st.streak = st.streak + 1 if st.streak_side == side else 1
    st.streak_side = side
    if st.streak < cfg.consecutive:
        return Decision(
            size=None, reason=f"{rule}; reading {st.streak} of {cfg.consecutive}", state=st
        )
    if target == size:
        return Decision(size=None, reason=f"{rule}: already {size}", state=st)
    wait = timedelta(seconds=cfg.cooldown(side))
    if st.last_resize is not None and now < st.last_resize + wait:
        return Decision(size=None, reason=f"{rule}; in cooldown", state=st)
    st.last_resize, st.streak = now, 0
    return Decision(size=target, reason=rule, state=st)
