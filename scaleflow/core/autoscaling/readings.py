"""A metric reading: what every metric source returns and every strategy reads."""

from __future__ import annotations

from pydantic import BaseModel, Field

from scaleflow.core.autoscale import StatsSample

# Metric names the rules look for.
CPU = "cpu"
MEMORY = "memory"
MISS_RATE = "miss_rate"

PERCENT = "%"
RATIO = "ratio"


def format_value(value: float, unit: str = "") -> str:
    """``83.0%``, ``0.250`` (a ratio), or the plain number."""
    if unit == PERCENT:
        return f"{value:.1f}%"
    if unit == RATIO:
        return f"{value:.3f}"
    return f"{value:g}{' ' + unit if unit else ''}"


class Reading(BaseModel):
    """One value of one metric, e.g. the pool's allocated CPU from Nomad."""

    metric: str = Field(min_length=1)
    # A rule cannot compare NaN or infinity: sources refuse them instead.
    value: float = Field(allow_inf_nan=False)
    unit: str = ""
    source: str
    # For people: "cpu 83.0%"; reasons quote it as is.
    text: str = ""
    # Where the figure came from, e.g. "3320/4000 MHz allocated on 2 nodes".
    detail: str = ""

    def model_post_init(self, _context: object) -> None:
        if not self.text:
            self.text = f"{self.metric} {format_value(self.value, self.unit)}"


class Readings(BaseModel):
    """What a metric-source activity returns."""

    readings: list[Reading] = Field(default_factory=list)

    @property
    def summary(self) -> str:
        return ", ".join(r.text for r in self.readings) or "no readings"


def latest(readings: list[Reading], metric: str) -> Reading | None:
    """The last reading of ``metric`` (a source may be read more than once a round)."""
    found = [r for r in readings if r.metric == metric]
    return found[-1] if found else None


def miss_rate_reading(sample: StatsSample) -> Reading:
    """Today's statistics sample as a reading: CloudWatch's miss rate when the pool
    reads it there, else the nodes' own counters (what the pool's rule reads)."""
    if sample.cloudwatch_miss_rate is not None:
        value, source = sample.cloudwatch_miss_rate, "cloudwatch"
    else:
        value, source = sample.miss_rate, "memcached"
    return Reading(
        metric=MISS_RATE,
        value=value,
        unit=RATIO,
        source=source,
        text=f"miss rate {value:.3f}",
        detail=f"{sample.misses}/{sample.gets} gets missed on {sample.nodes} nodes",
    )
