"""The Nomad allocation metric source over real HTTP, against the Nomad API test double."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from scaleflow.activities.nomad import NOMAD_NODE_ID_ATTR
from scaleflow.activities.readings.nomad_allocation import StubWithCapacity
from scaleflow.activities.readings.sources import ReadingActivities
from scaleflow.core.autoscaling.checks import ChecksPolicy
from scaleflow.core.autoscaling.decision import ScalingGate, StrategyState
from scaleflow.core.autoscaling.readings import Readings
from scaleflow.core.autoscaling.source_io import NomadAllocationInput
from scaleflow.core.autoscaling.strategies import decide_scaling
from scaleflow.core.models import Check, Engine, Node, PoolConfig
from scaleflow.core.settings import Settings
from tests.doubles.nomad_double import DoubleNode, NomadApiDouble, nomad_double

CLASS = "web"
AT = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def nomad() -> Iterator[tuple[NomadApiDouble, str]]:
    with nomad_double() as pair:
        yield pair


def read(url: str, req: NomadAllocationInput, **settings: Any) -> Readings:
    acts = ReadingActivities(Settings(nomad_address=url, **settings))
    return ActivityEnvironment().run(acts.nomad_allocation, req)


def values(got: Readings) -> dict[str, float]:
    return {r.metric: r.value for r in got.readings}


def class_input(node_class: str = CLASS, nodes: list[Node] | None = None) -> NomadAllocationInput:
    return NomadAllocationInput(pool="pool-a", node_class=node_class, nodes=nodes or [])


def pool_node(node_id: str, instance: str = "", **attributes: str) -> Node:
    return Node(id=node_id, provider_ref=instance, created_at=AT, attributes=dict(attributes))


def busy_class(double: NomadApiDouble) -> tuple[str, str]:
    """Two nodes of the class (4000 MHz, 8192 MB each) with live and finished allocations,
    and nodes that must not count: another class, an ineligible one, a down one."""
    n1 = double.add_node(CLASS, "i-1")
    n2 = double.add_node(CLASS, "i-2")
    double.add_alloc(n1, cpu_shares=1000, memory_mb=1024)
    double.add_alloc(n1, cpu_shares=500, memory_mb=512, client_status="pending")
    double.add_alloc(n1, cpu_shares=2000, memory_mb=2048, client_status="complete")
    double.add_alloc(n1, cpu_shares=2000, memory_mb=2048, client_status="failed")
    double.add_alloc(n2, cpu_shares=1500, memory_mb=2048)
    other = double.add_node("batch", "i-3")
    double.add_alloc(other, cpu_shares=4000, memory_mb=8192)
    for nid in (
        double.add_node(CLASS, eligibility="ineligible"),
        double.add_node(CLASS, status="down"),
    ):
        double.add_alloc(nid, cpu_shares=4000, memory_mb=8192)
    return n1, n2


def test_the_class_share_of_cpu_and_memory(nomad: tuple[NomadApiDouble, str]) -> None:
    double, url = nomad
    busy_class(double)
    got = read(url, class_input())
    # (1000 + 500 + 1500) / 8000 and (1024 + 512 + 2048) / 16384: running and pending count.
    assert values(got) == {"cpu": 37.5, "memory": 21.875}
    assert [r.text for r in got.readings] == ["cpu 37.5%", "memory 21.9%"]
    assert {r.source for r in got.readings} == {"nomad"}
    assert [r.detail for r in got.readings] == [
        "3000/8000 MHz allocated on 2 nodes",
        "3584/16384 MB allocated on 2 nodes",
    ]
    assert ("GET", "/v1/nodes") in double.requests


def test_the_pools_own_nodes(nomad: tuple[NomadApiDouble, str]) -> None:
    double, url = nomad
    _, n2 = busy_class(double)
    # One pool node found by its instance id, one by the Nomad id readiness recorded; a
    # node Nomad has not seen yet adds nothing.
    nodes = [
        pool_node("a", "i-1"),
        pool_node("b", "i-2", **{NOMAD_NODE_ID_ATTR: n2}),
        pool_node("c", "i-new"),
    ]
    assert values(read(url, class_input(nodes=nodes))) == {"cpu": 37.5, "memory": 21.875}
    only_first = values(read(url, class_input(nodes=[pool_node("a", "i-1")])))
    assert only_first == {"cpu": 1500 / 40, "memory": 1536 * 100 / 8192}


def test_for_pool_uses_the_pools_class(nomad: tuple[NomadApiDouble, str]) -> None:
    double, url = nomad
    nid = double.add_node("", "i-x")  # no class: chemtrail-default
    double.add_alloc(nid, cpu_shares=2000, memory_mb=4096)
    cfg = PoolConfig(name="p", engine=Engine.NOMAD, node_class="chemtrail-default")
    got = read(url, NomadAllocationInput.for_pool(cfg, []))
    assert values(got) == {"cpu": 50.0, "memory": 50.0}


@dataclass
class ReservingNode(DoubleNode):
    """A node that reserves part of itself for the OS (the double reserves nothing)."""

    reserved_cpu: int = 0
    reserved_memory: int = 0

    def full(self) -> dict[str, Any]:
        data = super().full()
        data["ReservedResources"]["Cpu"]["CpuShares"] = self.reserved_cpu
        data["ReservedResources"]["Memory"]["MemoryMB"] = self.reserved_memory
        return data


def test_reserved_resources_are_not_allocatable(nomad: tuple[NomadApiDouble, str]) -> None:
    double, url = nomad
    nid = double.add_node(CLASS, "i-r", cpu_shares=2100, memory_mb=4352)
    double.nodes[nid] = ReservingNode(
        **vars(double.nodes[nid]), reserved_cpu=100, reserved_memory=256
    )
    double.add_alloc(nid, cpu_shares=1000, memory_mb=1024)
    assert values(read(url, class_input())) == {"cpu": 50.0, "memory": 25.0}


def test_capacity_from_a_listing_with_resources() -> None:
    # Nomad answers /v1/nodes?resources=true with the resources in each stub.
    stub = StubWithCapacity.model_validate(
        {
            "ID": "n",
            "NodeClass": CLASS,
            "Status": "ready",
            "NodeResources": {"Cpu": {"CpuShares": 4000}, "Memory": {"MemoryMB": 8192}},
            "ReservedResources": {"Cpu": {"CpuShares": 200}, "Memory": {"MemoryMB": 512}},
        }
    )
    assert stub.allocatable() == (3800, 7680)
    # Before Nomad 0.9: Resources and Reserved.
    old = StubWithCapacity.model_validate(
        {"ID": "o", "Resources": {"CPU": 1000, "MemoryMB": 512}, "Reserved": {"CPU": 100}}
    )
    assert old.allocatable() == (900, 512)
    assert StubWithCapacity.model_validate({"ID": "x"}).allocatable() is None


def test_no_nodes_is_retryable(nomad: tuple[NomadApiDouble, str]) -> None:
    double, url = nomad
    double.add_node("batch", "i-b")
    with pytest.raises(ApplicationError) as info:
        read(url, class_input())
    assert not info.value.non_retryable
    assert "no nodes to read" in str(info.value)
    assert "class web" in str(info.value)


def test_nomad_errors(nomad: tuple[NomadApiDouble, str]) -> None:
    double, url = nomad
    busy_class(double)
    double.fail_next(500)
    with pytest.raises(ApplicationError) as info:
        read(url, class_input())
    assert not info.value.non_retryable
    assert values(read(url, class_input()))["cpu"] == 37.5


def test_acl_token(nomad: tuple[NomadApiDouble, str]) -> None:
    double, url = nomad
    busy_class(double)
    double.required_token = "secret"
    with pytest.raises(ApplicationError) as info:
        read(url, class_input())
    assert info.value.non_retryable  # 403: retrying cannot fix a wrong token
    assert values(read(url, class_input(), nomad_token="secret"))["cpu"] == 37.5


def test_readings_drive_chemtrails_checks(nomad: tuple[NomadApiDouble, str]) -> None:
    double, url = nomad
    nid = double.add_node(CLASS, "i-1")
    double.add_alloc(nid, cpu_shares=3320, memory_mb=1024)
    got = read(url, class_input())
    policy = ChecksPolicy(
        checks={
            "cpu-high": Check(
                resource="cpu",
                comparison_operator="greater-than",
                comparison_percentage=80,
                action="scale-out",
            )
        }
    )
    decision = decide_scaling(
        policy, got.readings, 1, ScalingGate(min_count=1, max_count=4), StrategyState(), AT
    )
    assert decision.reason == "check cpu-high: cpu 83.0% > 80% -> scale-out by 1"
    assert (decision.count, decision.acted) == (2, True)
