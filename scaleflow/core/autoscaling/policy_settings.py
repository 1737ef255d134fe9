"""A policy's own autoscaler: which source is read, which strategy decides, how often,
and the gate's limits. Imports nothing of scaleflow's, so ``core.models`` can hold it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

# The resources a Nomad reading has (and a Chemtrail check may name).
NOMAD_METRICS = ("cpu", "memory")


class Check(BaseModel):
    """One of Chemtrail's checks: compare a resource's share with a percentage."""

    enabled: bool = True
    resource: Literal["cpu", "memory"]
    comparison_operator: Literal["greater-than", "less-than"]
    comparison_percentage: float = Field(ge=0, le=100)
    action: Literal["scale-in", "scale-out"]


class AutoscalingSettings(BaseModel):
    """Off by default. ``threshold`` evaluates the policy's checks; ``target-value``
    keeps ``metric`` at ``target`` (nomad-autoscaler's rule)."""

    enabled: bool = False
    # Chemtrail evaluates its checks every 180 s.
    interval_s: float = Field(default=180.0, ge=1, le=86_400)
    strategy: Literal["threshold", "target-value"] = "threshold"
    source: Literal["nomad", "prometheus"] = "nomad"
    # target-value: the reading kept at ``target`` (cpu or memory from Nomad; the
    # query's own name from Prometheus).
    metric: str | None = Field(default=None, min_length=1, max_length=200)
    target: float | None = Field(default=None, ge=0, le=1e12, allow_inf_nan=False)
    tolerance: float = Field(default=0.01, ge=0, le=1)
    prometheus_address: str = Field(default="http://127.0.0.1:9090", min_length=1)
    query: str | None = Field(default=None, min_length=1, max_length=10_000)
    # Counted from the last resize in either direction.
    cooldown_out_s: float = Field(default=0.0, ge=0, le=86_400)
    cooldown_in_s: float = Field(default=0.0, ge=0, le=86_400)
    consecutive: int = Field(default=1, ge=1, le=100)
    # Decisions are made and recorded, but nothing is queued.
    dry_run: bool = False

    @model_validator(mode="after")
    def _complete(self) -> AutoscalingSettings:
        if self.source == "prometheus" and not self.query:
            raise ValueError("a prometheus source needs a query")
        if self.strategy == "target-value":
            if self.target is None:
                raise ValueError("the target-value strategy needs a target")
            if not self.metric:
                raise ValueError("the target-value strategy needs a metric")
            if self.source == "nomad" and self.metric not in NOMAD_METRICS:
                raise ValueError(f"a nomad source reads cpu or memory, not metric {self.metric!r}")
        if self.strategy == "threshold" and self.source == "prometheus" and not self.metric:
            raise ValueError("checks over a prometheus source need the metric (cpu or memory)")
        return self

    @property
    def reading_metric(self) -> str | None:
        """The name a Prometheus reading is given (checks look for cpu or memory)."""
        return self.metric
