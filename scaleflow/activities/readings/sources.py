"""The metric-source activities, for the worker to register."""

from __future__ import annotations

from temporalio import activity

from scaleflow.activities.readings.nomad_allocation import NomadAllocationReader
from scaleflow.activities.readings.prometheus_query import read_prometheus_query
from scaleflow.core.autoscaling.readings import Readings
from scaleflow.core.autoscaling.source_io import NomadAllocationInput, PrometheusQueryInput
from scaleflow.core.settings import Settings


class ReadingActivities:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @activity.defn(name="read_nomad_allocation")
    def nomad_allocation(self, req: NomadAllocationInput) -> Readings:
        """``cpu`` and ``memory``: the allocated share (percent) of the pool's nodes."""
        return NomadAllocationReader(self.settings).read(req)

    @activity.defn(name="read_prometheus_query")
    def prometheus_query(self, req: PrometheusQueryInput) -> Readings:
        """One reading: the query's number, named ``req.metric``."""
        return read_prometheus_query(req)
