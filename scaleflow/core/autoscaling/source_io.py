"""Inputs of the metric-source activities (each returns
:class:`scaleflow.core.autoscaling.readings.Readings`)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from scaleflow.core.models import Node, PoolConfig


class NomadAllocationInput(BaseModel):
    """Read the allocated share of CPU and memory of a pool's Nomad nodes."""

    pool: str
    # The pool's Nomad node class (PoolConfig.nomad_class; no class is chemtrail-default).
    node_class: str = Field(min_length=1)
    # The pool's nodes, mapped to Nomad nodes as the nomad engine maps them; empty:
    # every node of the class. Either way only ready, eligible, undrained nodes count.
    nodes: list[Node] = Field(default_factory=list)

    @classmethod
    def for_pool(cls, cfg: PoolConfig, nodes: list[Node]) -> NomadAllocationInput:
        return cls(pool=cfg.name, node_class=cfg.nomad_class, nodes=nodes)


class PrometheusQueryInput(BaseModel):
    """An instant query whose answer is one number (a scalar, or a one-series vector)."""

    # Prometheus's own default address, as nomad-autoscaler's plugin has it.
    address: str = "http://127.0.0.1:9090"
    query: str = Field(min_length=1, max_length=10_000)
    # The reading's name, which the strategy looks for (a check's cpu or memory, a
    # target-value policy's metric); unset: the query itself.
    metric: str | None = None
    # "%" for percentages (checks compare percentages), "ratio", or any label.
    unit: str = ""
    timeout_s: float = Field(default=10.0, gt=0, le=300)
    pool: str = ""
