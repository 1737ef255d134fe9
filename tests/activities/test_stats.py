"""The pool's statistics activity: node counter deltas, and the CloudWatch path
against moto's server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from pymemcache.client.base import Client
from temporalio.testing import ActivityEnvironment

from scaleflow.activities.memcached import split_address
from scaleflow.activities.providers.local import LocalProvider
from scaleflow.activities.stats import StatsActivities
from scaleflow.core.activity_io import ProvisionInput
from scaleflow.core.models import Node, PoolConfig
from scaleflow.core.settings import Settings
from scaleflow.core.stats_io import StatsInput, StatsResult
from tests.aws_fixtures import AWS_REGION


@pytest.fixture
def node(settings: Settings) -> Iterator[Node]:
    local = LocalProvider(settings)
    made = local.provision(ProvisionInput(pool="p", node_id="n1", config=PoolConfig(name="p"))).node
    yield made
    local.stop_all()


def traffic(address: str, hits: int, misses: int) -> None:
    client = Client(split_address(address))
    client.set("present", "v")
    for _ in range(hits):
        assert client.get("present") == b"v"
    for i in range(misses):
        assert client.get(f"absent-{i}") is None
    client.close()


def read(acts: StatsActivities, req: StatsInput) -> StatsResult:
    return ActivityEnvironment().run(acts.pool_stats, req)


def test_deltas_of_the_nodes_counters(settings: Settings, node: Node) -> None:
    acts = StatsActivities(settings)
    first = read(acts, StatsInput(pool="p", nodes=[node]))
    assert node.address
    traffic(node.address, hits=30, misses=10)
    second = read(acts, StatsInput(pool="p", nodes=[node], previous=first.counters))
    assert (second.gets, second.hits, second.misses) == (40, 30, 10)
    assert second.items == 1


def test_cloudwatch_path(moto_url: str, tmp_path: Any, node: Node) -> None:
    settings = Settings(state_dir=tmp_path / "s", aws_endpoint_url=moto_url, aws_region=AWS_REGION)
    acts = StatsActivities(settings)
    first = read(acts, StatsInput(pool="p", nodes=[node]))
    assert node.address
    traffic(node.address, hits=25, misses=75)
    got = read(acts, StatsInput(pool="p", nodes=[node], previous=first.counters, cloudwatch=True))
    # The figures were published, and the miss rate read back from CloudWatch.
    assert got.cloudwatch_miss_rate == pytest.approx(0.75)
    cw = boto3.client("cloudwatch", endpoint_url=moto_url, region_name=AWS_REGION)
    names = {
        m["MetricName"] for m in cw.list_metrics(Namespace=settings.cloudwatch_namespace)["Metrics"]
    }
    assert {"GetRequests", "GetHits", "GetMisses", "Items", "Bytes"} <= names
