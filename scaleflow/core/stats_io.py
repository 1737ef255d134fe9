"""Inputs and results of the statistics activity."""

from __future__ import annotations

from pydantic import BaseModel, Field

from scaleflow.core.autoscale import NodeCounters
from scaleflow.core.models import Node


class StatsInput(BaseModel):
    pool: str
    nodes: list[Node]
    # Publish the interval's figures to CloudWatch and read the miss rate back.
    cloudwatch: bool = False
    interval_s: float = 60.0
    # Counters of the previous reading, per node id, for the deltas.
    previous: dict[str, NodeCounters] = Field(default_factory=dict)


class StatsResult(BaseModel):
    counters: dict[str, NodeCounters]
    gets: int
    hits: int
    misses: int
    items: int
    bytes: int
    cloudwatch_miss_rate: float | None = None
