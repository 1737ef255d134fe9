"""The pool's statistics: deltas of the nodes' own counters, and CloudWatch."""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any

import boto3
from pymemcache.exceptions import MemcacheError
from temporalio import activity

from scaleflow.activities.memcached import stats
from scaleflow.activities.notes import retryable
from scaleflow.core.autoscale import NodeCounters
from scaleflow.core.settings import Settings
from scaleflow.core.stats_io import StatsInput, StatsResult


def delta(now: int, before: int) -> int:
    # A restarted node's counters start again from zero.
    return now - before if now >= before else now


class StatsActivities:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._cloudwatch: Any = None

    def _cw(self) -> Any:
        with self._lock:
            if self._cloudwatch is None:
                self._cloudwatch = boto3.client(
                    "cloudwatch",
                    endpoint_url=self.settings.aws_endpoint_url,
                    region_name=self.settings.aws_region,
                )
            return self._cloudwatch

    @activity.defn(name="pool_stats")
    def pool_stats(self, req: StatsInput) -> StatsResult:
        counters: dict[str, NodeCounters] = {}
        gets = hits = misses = items = size = 0
        for node in req.nodes:
            if not node.address:
                continue
            try:
                raw = stats(node.address)
            except (OSError, ValueError, MemcacheError):
                continue  # a node that does not answer adds nothing this interval
            now = NodeCounters.model_validate(
                {k: int(raw.get(k, 0)) for k in NodeCounters.model_fields}
            )
            before = req.previous.get(node.id, NodeCounters())
            counters[node.id] = now
            gets += delta(now.cmd_get, before.cmd_get)
            hits += delta(now.get_hits, before.get_hits)
            misses += delta(now.get_misses, before.get_misses)
            items += now.curr_items
            size += now.bytes
        result = StatsResult(
            counters=counters, gets=gets, hits=hits, misses=misses, items=items, bytes=size
        )
        if req.cloudwatch:
            result.cloudwatch_miss_rate = self._through_cloudwatch(req, result)
        return result

    def _through_cloudwatch(self, req: StatsInput, result: StatsResult) -> float | None:
        """Publish the interval's figures; read the miss rate back as the autoscaler's input."""
        ns = self.settings.cloudwatch_namespace
        dims = [{"Name": "Pool", "Value": req.pool}]
        now = dt.datetime.now(dt.UTC)
        try:
            cw = self._cw()
            cw.put_metric_data(
                Namespace=ns,
                MetricData=[
                    {"MetricName": name, "Dimensions": dims, "Timestamp": now, "Value": value}
                    for name, value in (
                        ("GetRequests", result.gets),
                        ("GetHits", result.hits),
                        ("GetMisses", result.misses),
                        ("Items", result.items),
                        ("Bytes", result.bytes),
                    )
                ],
            )
            window = dt.timedelta(seconds=max(req.interval_s, 60))
            sums: dict[str, float] = {}
            for name in ("GetRequests", "GetMisses"):
                got = cw.get_metric_statistics(
                    Namespace=ns,
                    MetricName=name,
                    Dimensions=dims,
                    StartTime=now - window,
                    EndTime=now + dt.timedelta(seconds=1),
                    Period=int(window.total_seconds()),
                    Statistics=["Sum"],
                )
                sums[name] = sum(p["Sum"] for p in got.get("Datapoints", []))
        except Exception as exc:  # botocore's errors share no base worth naming here
            raise retryable(f"CloudWatch failed: {exc}", "cloudwatch") from None
        requests = sums.get("GetRequests", 0.0)
        return sums.get("GetMisses", 0.0) / requests if requests else 0.0
