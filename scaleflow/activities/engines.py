"""Activities that depend on what runs on a node: readiness, load and drain."""

from __future__ import annotations

from typing import Any

from temporalio import activity

from scaleflow.activities.memcached import MemcachedEngine
from scaleflow.activities.nomad import NomadEngine
from scaleflow.activities.notes import note
from scaleflow.core.activity_io import (
    DrainInput,
    DrainResult,
    LoadInput,
    LoadResult,
    ReadyInput,
    ReadyResult,
)
from scaleflow.core.models import Engine, NodeState
from scaleflow.core.settings import Settings


def _heartbeat(*details: Any) -> None:
    if activity.in_activity():
        activity.heartbeat(*details)


class EngineActivities:
    def __init__(self, settings: Settings) -> None:
        self.memcached = MemcachedEngine(settings)
        self.nomad = NomadEngine(settings)

    def _engine(self, engine: Engine) -> MemcachedEngine | NomadEngine | None:
        return {Engine.MEMCACHED: self.memcached, Engine.NOMAD: self.nomad}.get(engine)

    @activity.defn(name="node_ready")
    def node_ready(self, req: ReadyInput) -> ReadyResult:
        impl = self._engine(req.config.engine)
        if impl is None:
            return ReadyResult(node=req.node.model_copy(update={"state": NodeState.READY}))
        return impl.ready(req, _heartbeat)

    @activity.defn(name="node_load")
    def node_load(self, req: LoadInput) -> LoadResult:
        impl = self._engine(req.config.engine)
        return LoadResult() if impl is None else impl.load(req)

    @activity.defn(name="drain_node")
    def drain_node(self, req: DrainInput) -> DrainResult:
        impl = self._engine(req.config.engine)
        if impl is None:
            return DrainResult(
                completed=True, events=[note(f"node {req.node.id} has nothing to drain")]
            )
        return impl.drain(req, _heartbeat)
