"""Readings and the pool-wide allocation share (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from scaleflow.core.autoscaling.allocation import NoCapacity, NodeAllocation, allocation_readings
from scaleflow.core.autoscaling.readings import Reading, Readings, format_value, latest


def node(cap: int, used: int, mem_cap: int = 1000, mem_used: int = 0) -> NodeAllocation:
    return NodeAllocation(
        node_id=f"n{cap}-{used}",
        cpu_allocatable_mhz=cap,
        memory_allocatable_mb=mem_cap,
        cpu_allocated_mhz=used,
        memory_allocated_mb=mem_used,
    )


def test_the_share_is_pool_wide() -> None:
    # 3000 of 4000 and 0 of 12000: 3000 / 16000, not the mean of 75% and 0%.
    cpu, mem = allocation_readings([node(4000, 3000), node(12000, 0, 3000, 1000)])
    assert (cpu.metric, cpu.value, cpu.text) == ("cpu", 18.75, "cpu 18.8%")
    assert (mem.metric, mem.value) == ("memory", 25.0)
    assert cpu.detail == "3000/16000 MHz allocated on 2 nodes"


def test_no_capacity() -> None:
    with pytest.raises(NoCapacity, match="no nodes"):
        allocation_readings([])
    with pytest.raises(NoCapacity, match="no allocatable cpu on 1 nodes"):
        allocation_readings([node(0, 0)])


def test_readings_refuse_what_no_rule_can_compare() -> None:
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValidationError):
            Reading(metric="cpu", value=bad, source="x")


def test_text_and_lookup() -> None:
    assert [format_value(83, "%"), format_value(0.25, "ratio"), format_value(3)] == [
        "83.0%",
        "0.250",
        "3",
    ]
    a, b = Reading(metric="cpu", value=1, source="x"), Reading(metric="cpu", value=2, source="y")
    assert latest([a, b], "cpu") is b
    assert latest([a], "memory") is None
    assert Readings(readings=[a, b]).summary == "cpu 1, cpu 2"
    assert Reading(metric="q", value=1, source="x", text="custom").text == "custom"


@given(st.lists(st.tuples(st.integers(1, 10_000), st.integers(0, 10_000)), min_size=1))
def test_the_share_is_within_0_and_100_when_nothing_is_overcommitted(
    pairs: list[tuple[int, int]],
) -> None:
    nodes = [node(cap, min(used, cap)) for cap, used in pairs]
    cpu, _ = allocation_readings(nodes)
    assert 0 <= cpu.value <= 100
