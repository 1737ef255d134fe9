"""The Prometheus metric source over real HTTP, against the Prometheus API test double
evaluating queries over the project's real /metrics exposition."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest
from prometheus_client.exposition import generate_latest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from scaleflow.activities.readings.sources import ReadingActivities
from scaleflow.api.metrics import PoolReading, ScaleflowMetrics
from scaleflow.core.autoscale import AutoscalerConfig, StatsSample
from scaleflow.core.autoscaling.decision import ScaleDirection, ScalingGate, StrategyState
from scaleflow.core.autoscaling.miss_rate import MissRatePolicy
from scaleflow.core.autoscaling.readings import Readings
from scaleflow.core.autoscaling.source_io import PrometheusQueryInput
from scaleflow.core.autoscaling.strategies import decide_scaling
from scaleflow.core.errors import ErrorKind
from scaleflow.core.models import Node, PoolConfig, PoolView
from scaleflow.core.settings import Settings
from tests.activities.prometheus_double import (
    PrometheusApiDouble,
    evaluate,
    format_value,
    prometheus_double,
)

AT = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def pool_reading(name: str, size: int, gets: int, misses: int) -> PoolReading:
    nodes = [Node(id=f"{name}-{i}", created_at=AT) for i in range(size)]
    view = PoolView(
        name=name,
        config=PoolConfig(name=name, min_count=1, max_count=8),
        has_policy=True,
        nodes=nodes,
        queue=[],
        running=None,
    )
    sample = StatsSample(at=AT, gets=gets, hits=gets - misses, misses=misses, nodes=size)
    return PoolReading(view=view, stats=sample)


@pytest.fixture
def metrics() -> ScaleflowMetrics:
    """The API's metrics with two pools in their last scrape's snapshot."""
    m = ScaleflowMetrics()
    m.snapshot.pools = [pool_reading("web", 3, 200, 50), pool_reading("cache", 2, 100, 80)]
    return m


@pytest.fixture
def prometheus(metrics: ScaleflowMetrics) -> Iterator[tuple[PrometheusApiDouble, str]]:
    # Every query scrapes the exposition the API's /metrics would serve right now.
    with prometheus_double(lambda: generate_latest(metrics.registry).decode()) as pair:
        yield pair


def read(url: str, query: str, **kw: str) -> Readings:
    acts = ReadingActivities(Settings())
    req = PrometheusQueryInput(address=url, query=query, **kw)
    return ActivityEnvironment().run(acts.prometheus_query, req)


def failure(url: str, query: str) -> ApplicationError:
    with pytest.raises(ApplicationError) as info:
        read(url, query)
    return info.value


def test_a_pools_miss_rate(prometheus: tuple[PrometheusApiDouble, str]) -> None:
    double, url = prometheus
    got = read(url, 'scaleflow_autoscaler_miss_rate{pool="web"}', metric="miss_rate", unit="ratio")
    [reading] = got.readings
    assert (reading.metric, reading.value, reading.unit) == ("miss_rate", 0.25, "ratio")
    assert (reading.source, reading.text) == ("prometheus", "miss_rate 0.250")
    assert double.queries == ['scaleflow_autoscaler_miss_rate{pool="web"}']


def test_aggregations_and_scalar(prometheus: tuple[PrometheusApiDouble, str]) -> None:
    _, url = prometheus
    assert read(url, "sum(scaleflow_pool_size)").readings[0].value == 5
    assert read(url, "max(scaleflow_autoscaler_miss_rate)").readings[0].value == 0.8
    assert read(url, 'scalar(scaleflow_pool_max_nodes{pool=~"c.*"})').readings[0].value == 8
    # Unnamed, the reading is called after its query.
    assert read(url, "count(scaleflow_pool_info)").readings[0].text == (
        "count(scaleflow_pool_info) 2"
    )


def test_percent_reading_for_a_check(prometheus: tuple[PrometheusApiDouble, str]) -> None:
    _, url = prometheus
    got = read(url, "42.5", metric="cpu", unit="%")
    assert got.readings[0].text == "cpu 42.5%"


def test_the_double_answers_with_the_documented_envelope(
    prometheus: tuple[PrometheusApiDouble, str],
) -> None:
    _, url = prometheus
    resp = httpx.get(f"{url}/api/v1/query", params={"query": 'scaleflow_pool_size{pool="web"}'})
    body = resp.json()
    assert resp.status_code == 200
    assert body["status"] == "success"
    assert body["data"]["resultType"] == "vector"
    [series] = body["data"]["result"]
    assert series["metric"] == {"__name__": "scaleflow_pool_size", "pool": "web"}
    assert isinstance(series["value"][0], float)
    assert series["value"][1] == "3"
    # The same parameters, form-encoded in a POST, as Prometheus also takes them.
    posted = httpx.post(f"{url}/api/v1/query", data={"query": "sum(scaleflow_pool_size)"})
    [total] = posted.json()["data"]["result"]
    assert (total["metric"], total["value"][1]) == ({}, "5")
    bad = httpx.get(f"{url}/api/v1/query", params={"query": "rate(x[5m])"})
    assert bad.status_code == 400
    assert bad.json()["status"] == "error"
    assert bad.json()["errorType"] == "bad_data"


def test_several_series_are_refused(prometheus: tuple[PrometheusApiDouble, str]) -> None:
    _, url = prometheus
    err = failure(url, "scaleflow_pool_size")
    assert err.non_retryable
    assert err.type == ErrorKind.INVALID.value
    assert "returned 2 series, only 1 is expected" in str(err)


def test_a_refused_query_is_fatal(prometheus: tuple[PrometheusApiDouble, str]) -> None:
    _, url = prometheus
    err = failure(url, "rate(scaleflow_http_requests_total[5m])")
    assert err.non_retryable
    assert "bad_data" in str(err)


def test_no_series_is_retryable(prometheus: tuple[PrometheusApiDouble, str]) -> None:
    _, url = prometheus
    err = failure(url, 'scaleflow_pool_size{pool="gone"}')
    assert not err.non_retryable
    assert "returned no series" in str(err)


def test_nan_is_retryable(prometheus: tuple[PrometheusApiDouble, str]) -> None:
    _, url = prometheus
    # scalar() of two series is NaN in PromQL.
    err = failure(url, "scalar(scaleflow_pool_size)")
    assert not err.non_retryable
    assert "NaN" in str(err)


def test_a_timed_out_query_is_retryable(prometheus: tuple[PrometheusApiDouble, str]) -> None:
    double, url = prometheus
    double.fail_next(503, "timeout")
    err = failure(url, "sum(scaleflow_pool_size)")
    assert not err.non_retryable
    assert "timeout" in str(err)
    assert read(url, "sum(scaleflow_pool_size)").readings[0].value == 5


def test_unreachable_is_retryable() -> None:
    with prometheus_double(lambda: "") as (_, url):
        pass  # stopped: nothing listens there any more
    err = failure(url, "1")
    assert not err.non_retryable
    assert "unreachable" in str(err)


def test_a_reading_drives_the_miss_rate_rule(prometheus: tuple[PrometheusApiDouble, str]) -> None:
    _, url = prometheus
    got = read(url, 'scaleflow_autoscaler_miss_rate{pool="cache"}', metric="miss_rate")
    policy = MissRatePolicy(config=AutoscalerConfig())
    decision = decide_scaling(
        policy, got.readings, 2, ScalingGate(min_count=1, max_count=8), StrategyState(), AT
    )
    assert decision.count == 3
    assert decision.direction is ScaleDirection.OUT
    assert decision.reason == "miss rate 0.800 > max 0.6: clip(round(2 * 1.5), 1, 8) = 3"


def test_evaluate_and_format_follow_prometheus() -> None:
    text = '# TYPE x gauge\nx{a="1"} 1.5\nx{a="2"} 2.5\n'
    assert evaluate('x{a!="1"}', text) == [({"__name__": "x", "a": "2"}, 2.5)]
    assert evaluate("avg(x)", text) == [({}, 2.0)]
    assert evaluate('sum(x{a="3"})', text) == []
    assert [format_value(v) for v in (2.0, 0.1, 1e-7, float("inf"), float("nan"))] == [
        "2",
        "0.1",
        "0.0000001",
        "+Inf",
        "NaN",
    ]


def test_an_address_that_is_not_prometheus_is_fatal(
    prometheus: tuple[PrometheusApiDouble, str],
) -> None:
    _, url = prometheus
    err = failure(f"{url}/not-here", "1")
    assert err.non_retryable
    assert "answered 404 with no API response" in str(err)
