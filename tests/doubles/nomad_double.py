"""A TEST DOUBLE of Nomad's HTTP API — not Nomad.

``NomadApiDouble`` serves, over real HTTP on a loopback port, exactly the endpoints the
nomad engine uses, with the JSON shapes Nomad documents:

- ``GET /v1/nodes`` (node stubs; ``?prefix=`` supported)
- ``GET /v1/node/:id`` (the full node; 404 ``node not found`` for an unknown id)
- ``GET /v1/node/:id/allocations``
- ``POST /v1/node/:id/drain``

Drains are simulated deterministically rather than by a scheduler: once a node has a
``DrainStrategy``, every read of ``GET /v1/node/:id`` moves one live allocation to
``ClientStatus: complete`` / ``DesiredStatus: stop`` (all of them once the deadline has
passed, or straight away for a forced drain); the first read that finds no live allocation
clears the ``DrainStrategy``, which is how Nomad reports a finished drain.

Start it with ``start_nomad_double()`` (returns ``(double, base_url)``; call
``double.stop()``) or the ``nomad_double()`` context manager.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse

from tests.servers import ThreadedServer

INSTANCE_ID_ATTR = "unique.platform.aws.instance-id"
LIVE = frozenset({"pending", "running"})
# Go's zero time.Time, which Nomad prints for an unset ForceDeadline.
ZERO_TIME = "0001-01-01T00:00:00Z"


def _rfc3339(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).isoformat().replace("+00:00", "Z")


def _new_id() -> str:
    return str(uuid.uuid4())


@dataclass
class DoubleNode:
    id: str
    name: str
    node_class: str
    status: str = "ready"
    eligibility: str = "eligible"
    attributes: dict[str, str] = field(default_factory=dict)
    cpu_shares: int = 4000
    memory_mb: int = 8192
    datacenter: str = "dc1"
    # The DrainStrategy as Nomad returns it, or None when not draining.
    drain_strategy: dict[str, Any] | None = None
    drain_started_ns: int = 0
    last_drain: dict[str, Any] | None = None
    # Tests can freeze a drain to simulate one that never finishes.
    drain_paused: bool = False
    create_index: int = 1
    modify_index: int = 1

    def stub(self) -> dict[str, Any]:
        return {
            "ID": self.id,
            "Name": self.name,
            "Datacenter": self.datacenter,
            "NodeClass": self.node_class,
            "Status": self.status,
            "StatusDescription": "",
            "SchedulingEligibility": self.eligibility,
            "Drain": self.drain_strategy is not None,
            "LastDrain": self.last_drain,
            "Version": "1.7.0",
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }

    def full(self) -> dict[str, Any]:
        return {
            **self.stub(),
            "HTTPAddr": "127.0.0.1:4646",
            "Attributes": dict(self.attributes),
            "Meta": {},
            "DrainStrategy": dict(self.drain_strategy) if self.drain_strategy else None,
            "NodeResources": {
                "Cpu": {"CpuShares": self.cpu_shares},
                "Memory": {"MemoryMB": self.memory_mb},
                "Disk": {"DiskMB": 100_000},
                "Networks": [],
            },
            "ReservedResources": {
                "Cpu": {"CpuShares": 0},
                "Memory": {"MemoryMB": 0},
                "Disk": {"DiskMB": 0},
            },
        }


@dataclass
class DoubleAlloc:
    id: str
    node_id: str
    cpu_shares: int
    memory_mb: int
    client_status: str = "running"
    desired_status: str = "run"
    job_id: str = "web"
    job_type: str = "service"
    task: str = "main"
    migrate: bool | None = None
    create_index: int = 1
    modify_index: int = 1

    def to_json(self) -> dict[str, Any]:
        return {
            "ID": self.id,
            "EvalID": self.id,
            "Name": f"{self.job_id}.{self.task}[0]",
            "NodeID": self.node_id,
            "JobID": self.job_id,
            "Job": {"ID": self.job_id, "Type": self.job_type},
            "TaskGroup": self.task,
            "DesiredStatus": self.desired_status,
            "DesiredDescription": "",
            "DesiredTransition": {"Migrate": self.migrate},
            "ClientStatus": self.client_status,
            "ClientDescription": "",
            "AllocatedResources": {
                "Tasks": {
                    self.task: {
                        "Cpu": {"CpuShares": self.cpu_shares},
                        "Memory": {"MemoryMB": self.memory_mb},
                    }
                },
                "Shared": {"DiskMB": 300},
            },
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }


@dataclass
class RecordedDrain:
    node_id: str
    body: dict[str, Any]


class NomadApiDouble:
    """In-memory state behind the fake Nomad endpoints, plus the knobs tests turn."""

    def __init__(self, required_token: str | None = None) -> None:
        self.required_token = required_token
        self.nodes: dict[str, DoubleNode] = {}
        self.allocs: dict[str, DoubleAlloc] = {}
        self.drain_requests: list[RecordedDrain] = []
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.RLock()
        self._index = 1
        self._failures: list[tuple[int, str]] = []
        self._timers: list[threading.Timer] = []
        self._http: ThreadedServer | None = None
        self.app = self._build_app()

    # ---- what tests call ------------------------------------------------------

    def add_node(
        self,
        node_class: str,
        instance_id: str | None = None,
        *,
        node_id: str | None = None,
        name: str | None = None,
        status: str = "ready",
        eligibility: str = "eligible",
        cpu_shares: int = 4000,
        memory_mb: int = 8192,
        attributes: dict[str, str] | None = None,
    ) -> str:
        """Register a client node; returns its Nomad node id."""
        nid = node_id or _new_id()
        attrs = dict(attributes or {})
        if instance_id:
            attrs[INSTANCE_ID_ATTR] = instance_id
        with self._lock:
            index = self._bump()
            self.nodes[nid] = DoubleNode(
                id=nid,
                name=name or f"client-{nid[:8]}",
                node_class=node_class,
                status=status,
                eligibility=eligibility,
                attributes=attrs,
                cpu_shares=cpu_shares,
                memory_mb=memory_mb,
                create_index=index,
                modify_index=index,
            )
        return nid

    def register_later(self, delay_s: float, node_class: str, instance_id: str, **kw: Any) -> str:
        """Register a node after ``delay_s`` (an instance whose Nomad client starts late)."""
        nid = kw.pop("node_id", None) or _new_id()
        timer = threading.Timer(
            delay_s, self.add_node, args=(node_class, instance_id), kwargs={"node_id": nid, **kw}
        )
        timer.daemon = True
        self._timers.append(timer)
        timer.start()
        return nid

    def add_alloc(
        self,
        node_id: str,
        cpu_shares: int,
        memory_mb: int = 256,
        *,
        client_status: str = "running",
        desired_status: str = "run",
        alloc_id: str | None = None,
        job_id: str = "web",
        job_type: str = "service",
    ) -> str:
        aid = alloc_id or _new_id()
        with self._lock:
            index = self._bump()
            self.allocs[aid] = DoubleAlloc(
                id=aid,
                node_id=node_id,
                cpu_shares=cpu_shares,
                memory_mb=memory_mb,
                client_status=client_status,
                desired_status=desired_status,
                job_id=job_id,
                job_type=job_type,
                create_index=index,
                modify_index=index,
            )
        return aid

    def set_node(
        self,
        node_id: str,
        *,
        status: str | None = None,
        eligibility: str | None = None,
        drain_paused: bool | None = None,
    ) -> None:
        with self._lock:
            node = self.nodes[node_id]
            if status is not None:
                node.status = status
            if eligibility is not None:
                node.eligibility = eligibility
            if drain_paused is not None:
                node.drain_paused = drain_paused
            node.modify_index = self._bump()

    def fail_next(self, status_code: int, count: int = 1, body: str = "injected failure") -> None:
        """Answer the next ``count`` requests with ``status_code`` instead."""
        with self._lock:
            self._failures.extend([(status_code, body)] * count)

    def allocs_on(self, node_id: str) -> list[DoubleAlloc]:
        with self._lock:
            return [a for a in self.allocs.values() if a.node_id == node_id]

    def drain_posts_for(self, node_id: str) -> int:
        return sum(1 for d in self.drain_requests if d.node_id == node_id)

    # ---- serving --------------------------------------------------------------

    def start(self) -> str:
        self._http = ThreadedServer(self.app, "nomad double")
        return self._http.start()

    def stop(self) -> None:
        for timer in self._timers:
            timer.cancel()
        if self._http is not None:
            self._http.stop()

    # ---- the simulation ---------------------------------------------------------

    def _bump(self) -> int:
        self._index += 1
        return self._index

    def _step_drain(self, node: DoubleNode) -> None:
        """Advance a drain by one step; called on each read of the node."""
        strategy = node.drain_strategy
        if strategy is None or node.drain_paused:
            return
        live = [a for a in self.allocs.values() if a.node_id == node.id and a.client_status in LIVE]
        if not live:
            node.drain_strategy = None
            node.last_drain = {**(node.last_drain or {}), "Status": "complete"}
            node.last_drain["UpdatedAt"] = _rfc3339(time.time_ns())
            node.modify_index = self._bump()
            return
        deadline_ns = strategy["Deadline"]
        past_deadline = deadline_ns > 0 and time.time_ns() >= node.drain_started_ns + deadline_ns
        forced = deadline_ns < 0 or past_deadline
        for alloc in live if forced else live[:1]:
            alloc.client_status = "complete"
            alloc.desired_status = "stop"
            alloc.modify_index = self._bump()

    def _drain(self, node: DoubleNode, body: dict[str, Any]) -> dict[str, Any]:
        spec = body.get("DrainSpec")
        now = time.time_ns()
        index = self._bump()
        if spec is None:
            # Nomad: a null DrainSpec cancels the drain.
            node.drain_strategy = None
            if body.get("MarkEligible"):
                node.eligibility = "eligible"
            node.last_drain = {**(node.last_drain or {}), "Status": "canceled"}
        else:
            deadline = int(spec.get("Deadline", 0))
            node.drain_strategy = {
                "Deadline": deadline,
                "IgnoreSystemJobs": bool(spec.get("IgnoreSystemJobs", False)),
                # Nomad sets ForceDeadline only for a positive deadline.
                "ForceDeadline": _rfc3339(now + deadline) if deadline > 0 else ZERO_TIME,
                "StartedAt": _rfc3339(now),
            }
            node.drain_started_ns = now
            node.eligibility = "ineligible"
            node.last_drain = {
                "StartedAt": _rfc3339(now),
                "UpdatedAt": _rfc3339(now),
                "Status": "draining",
                "AccessorID": "",
                "Meta": dict(body.get("Meta") or {}),
            }
            for alloc in self.allocs.values():
                if alloc.node_id == node.id and alloc.client_status in LIVE:
                    alloc.migrate = True
                    alloc.modify_index = index
        node.modify_index = index
        return {"EvalIDs": [], "EvalCreateIndex": 0, "NodeModifyIndex": index, "Index": index}

    def _build_app(self) -> FastAPI:
        app = FastAPI(title="Nomad HTTP API test double", openapi_url=None, docs_url=None)
        double = self

        def answer(data: Any) -> JSONResponse:
            return JSONResponse(data, headers={"X-Nomad-Index": str(double._index)})

        def not_found() -> PlainTextResponse:
            return PlainTextResponse("node not found", status_code=404)

        @app.middleware("http")
        async def gate(request: Request, call_next: Any) -> Response:
            with double._lock:
                double.requests.append((request.method, request.url.path))
                failure = double._failures.pop(0) if double._failures else None
            if failure is not None:
                return PlainTextResponse(failure[1], status_code=failure[0])
            token = double.required_token
            if token is not None and request.headers.get("X-Nomad-Token") != token:
                return PlainTextResponse("Permission denied", status_code=403)
            return await call_next(request)

        @app.get("/v1/nodes")
        def list_nodes(prefix: str = "") -> JSONResponse:
            with double._lock:
                stubs = [n.stub() for n in double.nodes.values() if n.id.startswith(prefix)]
            return answer(stubs)

        @app.get("/v1/node/{node_id}")
        def read_node(node_id: str) -> Response:
            with double._lock:
                node = double.nodes.get(node_id)
                if node is None:
                    return not_found()
                double._step_drain(node)
                data = node.full()
            return answer(data)

        @app.get("/v1/node/{node_id}/allocations")
        def node_allocations(node_id: str) -> Response:
            # Like Nomad, an unknown node simply has no allocations.
            with double._lock:
                allocs = [a.to_json() for a in double.allocs.values() if a.node_id == node_id]
            return answer(allocs)

        @app.post("/v1/node/{node_id}/drain")
        async def drain_node(node_id: str, request: Request) -> Response:
            try:
                body = await request.json()
            except ValueError:
                return PlainTextResponse("failed to parse request", status_code=400)
            with double._lock:
                node = double.nodes.get(node_id)
                if node is None:
                    return not_found()
                double.drain_requests.append(RecordedDrain(node_id=node_id, body=body))
                return answer(double._drain(node, body))

        return app


def start_nomad_double(required_token: str | None = None) -> tuple[NomadApiDouble, str]:
    """Start a double on a free loopback port; returns it and its base URL."""
    double = NomadApiDouble(required_token=required_token)
    return double, double.start()


@contextmanager
def nomad_double(required_token: str | None = None) -> Iterator[tuple[NomadApiDouble, str]]:
    double, url = start_nomad_double(required_token)
    try:
        yield double, url
    finally:
        double.stop()
