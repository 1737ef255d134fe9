"""A pool's allocated share of CPU and memory, as nomad-autoscaler's Nomad APM computes
it for a node pool: everything allocated over everything allocatable, in percent (a
pool-wide share, not an average of the nodes' shares, so a big node weighs more)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from scaleflow.core.autoscaling.readings import CPU, MEMORY, PERCENT, Reading


class NodeAllocation(BaseModel):
    node_id: str
    # Allocatable: the node's resources less what it reserves for itself.
    cpu_allocatable_mhz: int = Field(ge=0)
    memory_allocatable_mb: int = Field(ge=0)
    # The sum over the node's live (running or pending) allocations.
    cpu_allocated_mhz: int = Field(default=0, ge=0)
    memory_allocated_mb: int = Field(default=0, ge=0)


class NoCapacity(ValueError):
    """No node, or nodes with nothing allocatable: there is no share to compute."""


def allocation_readings(nodes: list[NodeAllocation], source: str = "nomad") -> list[Reading]:
    """Readings ``cpu`` and ``memory`` (percent) over ``nodes``."""
    if not nodes:
        raise NoCapacity("no nodes to read")
    n = len(nodes)
    out = []
    for metric, unit, used, cap in (
        (
            CPU,
            "MHz",
            sum(x.cpu_allocated_mhz for x in nodes),
            sum(x.cpu_allocatable_mhz for x in nodes),
        ),
        (
            MEMORY,
            "MB",
            sum(x.memory_allocated_mb for x in nodes),
            sum(x.memory_allocatable_mb for x in nodes),
        ),
    ):
        if cap <= 0:
            raise NoCapacity(f"no allocatable {metric} on {n} nodes")
        out.append(
            Reading(
                metric=metric,
                value=used * 100 / cap,
                unit=PERCENT,
                source=source,
                detail=f"{used}/{cap} {unit} allocated on {n} node{'s' if n != 1 else ''}",
            )
        )
    return out
