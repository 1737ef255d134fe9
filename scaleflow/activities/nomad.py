"""The nomad engine: readiness, load and drain speak Nomad's HTTP API.

Readiness waits for the instance's Nomad client to register and become eligible; load is
the share of the node's CPU its live allocations hold; drain starts a Nomad node drain
and follows it the way Nomad's Go ``MonitorDrain`` does, turning its messages into events.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from scaleflow.activities.notes import fatal, note, retryable
from scaleflow.core.activity_io import (
    DrainInput,
    DrainResult,
    LoadInput,
    LoadResult,
    ReadyInput,
    ReadyResult,
)
from scaleflow.core.models import EventNote, Node, NodeState
from scaleflow.core.settings import Settings

SOURCE = "nomad"
Heartbeat = Callable[..., None]

# The node attribute Nomad's AWS fingerprinter sets; it maps a Nomad node to its instance.
INSTANCE_ID_ATTR = "unique.platform.aws.instance-id"
# The pool node attribute that caches the mapping once readiness has found it.
NOMAD_NODE_ID_ATTR = "nomad_node_id"
# Chemtrail counted nodes without a class as this class.
DEFAULT_CLASS = "chemtrail-default"

LIVE_CLIENT_STATUSES = frozenset({"pending", "running"})
DRAIN_MESSAGE = "drained by scaleflow"
# Nomad's DrainStatusComplete, in a node's LastDrain.
DRAIN_STATUS_COMPLETE = "complete"


# ---- Nomad's JSON (only the fields used) ------------------------------------


class _NomadModel(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class NomadNodeStub(_NomadModel):
    """An entry of ``GET /v1/nodes``."""

    id: str = Field(alias="ID")
    name: str | None = Field(default=None, alias="Name")
    node_class: str | None = Field(default=None, alias="NodeClass")
    status: str | None = Field(default=None, alias="Status")
    scheduling_eligibility: str | None = Field(default=None, alias="SchedulingEligibility")
    drain: bool = Field(default=False, alias="Drain")


class NomadDrainStrategy(_NomadModel):
    # Go embeds DrainSpec, so its fields sit at the top level of the JSON.
    deadline: int = Field(default=0, alias="Deadline")
    ignore_system_jobs: bool = Field(default=False, alias="IgnoreSystemJobs")
    force_deadline: str | None = Field(default=None, alias="ForceDeadline")
    started_at: str | None = Field(default=None, alias="StartedAt")


class NomadDrainMetadata(_NomadModel):
    """A node's ``LastDrain`` (Nomad 1.2+): how its latest drain went, and its Meta."""

    status: str | None = Field(default=None, alias="Status")
    meta: dict[str, str] | None = Field(default=None, alias="Meta")

    @property
    def finished_ours(self) -> bool:
        return (
            self.status == DRAIN_STATUS_COMPLETE
            and (self.meta or {}).get("message") == DRAIN_MESSAGE
        )


class NomadCpu(_NomadModel):
    cpu_shares: int = Field(default=0, alias="CpuShares")


class NomadMemory(_NomadModel):
    memory_mb: int = Field(default=0, alias="MemoryMB")


class NomadNodeResources(_NomadModel):
    cpu: NomadCpu = Field(default_factory=NomadCpu, alias="Cpu")
    memory: NomadMemory = Field(default_factory=NomadMemory, alias="Memory")


class NomadNode(NomadNodeStub):
    """``GET /v1/node/:id``."""

    attributes: dict[str, str] | None = Field(default=None, alias="Attributes")
    drain_strategy: NomadDrainStrategy | None = Field(default=None, alias="DrainStrategy")
    last_drain: NomadDrainMetadata | None = Field(default=None, alias="LastDrain")
    node_resources: NomadNodeResources | None = Field(default=None, alias="NodeResources")

    @property
    def instance_id(self) -> str | None:
        return (self.attributes or {}).get(INSTANCE_ID_ATTR)


class NomadTaskResources(_NomadModel):
    cpu: NomadCpu = Field(default_factory=NomadCpu, alias="Cpu")
    memory: NomadMemory = Field(default_factory=NomadMemory, alias="Memory")


class NomadAllocatedResources(_NomadModel):
    tasks: dict[str, NomadTaskResources] | None = Field(default=None, alias="Tasks")


class NomadDesiredTransition(_NomadModel):
    migrate: bool | None = Field(default=None, alias="Migrate")


class NomadAllocation(_NomadModel):
    """An entry of ``GET /v1/node/:id/allocations``."""

    id: str = Field(alias="ID")
    client_status: str = Field(default="", alias="ClientStatus")
    desired_status: str = Field(default="", alias="DesiredStatus")
    desired_transition: NomadDesiredTransition | None = Field(
        default=None, alias="DesiredTransition"
    )
    allocated_resources: NomadAllocatedResources | None = Field(
        default=None, alias="AllocatedResources"
    )

    @property
    def live(self) -> bool:
        return self.client_status in LIVE_CLIENT_STATUSES

    @property
    def cpu_shares(self) -> int:
        tasks = (self.allocated_resources.tasks if self.allocated_resources else None) or {}
        return sum(t.cpu.cpu_shares for t in tasks.values())


# ---- the client ---------------------------------------------------------------


class NomadNotFound(Exception):
    """A 404 from Nomad; readiness treats it as "not registered yet"."""


class NomadClient:
    """A small synchronous client for the few Nomad HTTP endpoints the engine needs.

    Errors come out as activity errors: transport failures and 5xx are retryable,
    other 4xx are not (404 is raised as ``NomadNotFound`` so callers can choose).
    """

    def __init__(self, address: str, token: str | None = None, timeout_s: float = 10.0) -> None:
        headers = {"X-Nomad-Token": token} if token else {}
        self.address = address.rstrip("/")
        self._http = httpx.Client(base_url=self.address, headers=headers, timeout=timeout_s)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> NomadClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            resp = self._http.request(method, path, json=body)
        except httpx.TransportError as exc:
            detail = str(exc) or type(exc).__name__
            raise retryable(f"nomad at {self.address} unreachable: {detail}", SOURCE) from exc
        if resp.status_code == 404:
            raise NomadNotFound(f"{method} {path}: {resp.text.strip() or 'not found'}")
        if resp.status_code >= 500:
            raise retryable(
                f"nomad {method} {path} failed: {resp.status_code} {resp.text.strip()}", SOURCE
            )
        if resp.status_code >= 400:
            raise fatal(
                f"nomad {method} {path} refused: {resp.status_code} {resp.text.strip()}", SOURCE
            )
        try:
            return resp.json()
        except ValueError as exc:
            raise retryable(f"nomad {method} {path} returned invalid JSON", SOURCE) from exc

    def list_nodes(self) -> list[NomadNodeStub]:
        data = self._request("GET", "/v1/nodes")
        return [parse_reply(NomadNodeStub, item) for item in data or []]

    def node(self, node_id: str) -> NomadNode:
        return parse_reply(NomadNode, self._request("GET", f"/v1/node/{node_id}"))

    def allocations(self, node_id: str) -> list[NomadAllocation]:
        data = self._request("GET", f"/v1/node/{node_id}/allocations")
        return [parse_reply(NomadAllocation, item) for item in data or []]

    def drain(self, node_id: str, deadline_ns: int) -> dict[str, Any]:
        body = {
            "DrainSpec": {"Deadline": deadline_ns, "IgnoreSystemJobs": False},
            "Meta": {"message": DRAIN_MESSAGE},
        }
        return self._request("POST", f"/v1/node/{node_id}/drain", body) or {}


M = TypeVar("M", bound=BaseModel)


def parse_reply(model: type[M], data: Any) -> M:
    """A Nomad answer as ``model``; an unexpected shape is retryable."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise retryable(f"nomad returned an unexpected {model.__name__}: {exc}", SOURCE) from exc


def _class_matches(node_class: str | None, want: str) -> bool:
    return (node_class or DEFAULT_CLASS) == want


def _attempt() -> int:
    return activity.info().attempt if activity.in_activity() else 1


def _drain_requested_before(nomad_id: str) -> bool:
    """Whether an earlier attempt of this activity heartbeated that it asked Nomad to
    drain ``nomad_id``."""
    if not activity.in_activity():
        return False
    details = activity.info().heartbeat_details
    last = details[0] if details else None
    return (
        isinstance(last, dict)
        and last.get("node") == nomad_id
        and bool(last.get("drain_requested"))
    )


def _quoted(value: str) -> str:
    # Nomad's messages use Go's %q.
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# ---- the engine -----------------------------------------------------------------


class NomadEngine:
    # How long past the drain deadline to keep following a drain before giving up;
    # Nomad itself stops the remaining allocations at the deadline.
    drain_grace_s: float = 30.0

    def __init__(self, settings: Settings) -> None:
        self.address = settings.nomad_address
        self.token = settings.nomad_token
        self.poll_s = settings.nomad_poll_interval_s
        self.self_node_id = settings.nomad_self_node_id

    def _client(self) -> NomadClient:
        # One client per call: activities run concurrently in worker threads.
        return NomadClient(self.address, self.token)

    def _class_nodes(self, client: NomadClient, node_class: str) -> list[NomadNode]:
        stubs = [s for s in client.list_nodes() if _class_matches(s.node_class, node_class)]
        nodes = []
        for stub in stubs:
            try:
                nodes.append(client.node(stub.id))
            except NomadNotFound:
                continue  # purged between the list and the read
        return nodes

    def _find(self, client: NomadClient, node: Node, node_class: str) -> NomadNode | None:
        """The Nomad node behind a pool node, or None while there is none."""
        nomad_id = node.attributes.get(NOMAD_NODE_ID_ATTR)
        if nomad_id:
            try:
                return client.node(nomad_id)
            except NomadNotFound:
                return None
        if not node.provider_ref:
            return None
        matches = [
            c for c in self._class_nodes(client, node_class) if c.instance_id == node.provider_ref
        ]
        # A client that re-registered leaves its old, down node behind: prefer the live one.
        matches.sort(key=lambda c: c.status != "ready")
        return matches[0] if matches else None

    # ---- readiness ----------------------------------------------------------------

    def ready(self, req: ReadyInput, heartbeat: Heartbeat) -> ReadyResult:
        node = req.node
        deadline = time.monotonic() + req.timeout_s
        waiting_for = f"no Nomad node of class {req.config.nomad_class} for {node.provider_ref!r}"
        with self._client() as client:
            while True:
                try:
                    found = self._find(client, node, req.config.nomad_class)
                except NomadNotFound as exc:
                    found, waiting_for = None, str(exc)
                except ApplicationError as exc:
                    if exc.non_retryable:
                        raise
                    # Nomad may be briefly unreachable; the timeout bounds the wait.
                    found, waiting_for = None, str(exc)
                if found is not None:
                    if found.status == "ready" and found.scheduling_eligibility == "eligible":
                        attrs = {**node.attributes, NOMAD_NODE_ID_ATTR: found.id}
                        ready = node.model_copy(
                            update={"state": NodeState.READY, "attributes": attrs}
                        )
                        return ReadyResult(
                            node=ready, events=[note(f"node {found.id} is ready", SOURCE)]
                        )
                    waiting_for = (
                        f"node {found.id} is {found.status}, {found.scheduling_eligibility}"
                    )
                if time.monotonic() >= deadline:
                    raise retryable(
                        f"node {node.id} did not become ready in Nomad within "
                        f"{req.timeout_s:g}s: {waiting_for}",
                        SOURCE,
                    )
                heartbeat("waiting", waiting_for)
                time.sleep(self.poll_s)

    # ---- load -----------------------------------------------------------------------

    def load(self, req: LoadInput) -> LoadResult:
        load: dict[str, float] = {}
        with self._client() as client:
            # Read every node of the class once, rather than once per pool node.
            by_instance: dict[str, NomadNode] = {}
            if any(not n.attributes.get(NOMAD_NODE_ID_ATTR) for n in req.nodes):
                for nn in self._class_nodes(client, req.config.nomad_class):
                    if nn.instance_id:
                        by_instance[nn.instance_id] = nn
            for node in req.nodes:
                nomad_id = node.attributes.get(NOMAD_NODE_ID_ATTR)
                if nomad_id:
                    try:
                        found: NomadNode | None = client.node(nomad_id)
                    except NomadNotFound:
                        found = None
                else:
                    found = by_instance.get(node.provider_ref) if node.provider_ref else None
                if found is None or (self.self_node_id and found.id == self.self_node_id):
                    continue  # unmappable, or the node the scaler runs on: never a candidate
                total = found.node_resources.cpu.cpu_shares if found.node_resources else 0
                if total <= 0:
                    continue
                # CPU, not memory: the original read memory here by mistake.
                used = sum(
                    a.cpu_shares
                    for a in client.allocations(found.id)
                    if a.live and a.desired_status == "run"
                )
                load[node.id] = used / total
        summary = ", ".join(f"{k}={v:.0%}" for k, v in sorted(load.items()))
        return LoadResult(
            load=load, events=[note(f"allocated CPU per node: {summary or 'none'}", SOURCE)]
        )

    # ---- drain ------------------------------------------------------------------------

    def drain(self, req: DrainInput, heartbeat: Heartbeat) -> DrainResult:
        with self._client() as client:
            try:
                found = self._find(client, req.node, req.config.nomad_class)
            except NomadNotFound as exc:
                raise fatal(f"cannot drain node {req.node.id}: {exc}", SOURCE) from exc
            if found is None:
                raise fatal(
                    f"cannot drain node {req.node.id}: no Nomad node found for it "
                    f"(class {req.config.nomad_class}, instance {req.node.provider_ref!r})",
                    SOURCE,
                )
            try:
                return self._drain(client, found, req, heartbeat)
            except NomadNotFound as exc:
                raise fatal(f"node {found.id} vanished from Nomad while draining", SOURCE) from exc

    def _drain(
        self, client: NomadClient, node: NomadNode, req: DrainInput, heartbeat: Heartbeat
    ) -> DrainResult:
        nid = node.id
        events: list[EventNote] = []
        # Seed the view of the allocations before starting, so the first stops are seen.
        seen = {a.id: a for a in client.allocations(nid)}
        final = req.deadline_ns == 0
        if node.drain_strategy is None and not final and req.first:
            if self._requested_by_earlier_attempt(node, list(seen.values())):
                # That attempt's result was lost (its worker died): posting again would
                # restart the drain, or start a second one on a drained node.
                events.append(
                    note(
                        f"drain of node {_quoted(nid)} was requested by an earlier attempt", SOURCE
                    )
                )
            else:
                remaining_ns = req.deadline_ns - time.time_ns()
                # In Nomad a zero deadline means "no deadline" and a negative one "force
                # now"; a deadline already passed must force, never wait forever.
                client.drain(nid, remaining_ns if remaining_ns > 0 else -1)
                # Recorded at once, so a retry after a crash knows not to post again.
                heartbeat({"node": nid, "drain_requested": True})
        # else: a drain is already under way (a resumed activity, or a later slice);
        # posting again would restart Nomad's deadline clock.

        allocs_done = drain_done = False
        was_down = False
        give_up_ns = req.deadline_ns + int(self.drain_grace_s * 1e9)
        slice_end = time.monotonic() + req.slice_s
        while True:
            running = 0
            for alloc in client.allocations(nid):
                before = seen.get(alloc.id)
                seen[alloc.id] = alloc
                if before is not None and before.client_status != alloc.client_status:
                    events.append(
                        note(
                            f"alloc {_quoted(alloc.id)} status "
                            f"{before.client_status} -> {alloc.client_status}",
                            SOURCE,
                        )
                    )
                if alloc.live:
                    running += 1
            if running == 0 and not allocs_done:
                allocs_done = True
                events.append(note(f"all allocations on node {_quoted(nid)} have stopped", SOURCE))

            current = client.node(nid)
            if current.status == "down" and not was_down:
                events.append(note(f"node {_quoted(nid)} down", SOURCE))
            was_down = current.status == "down"
            if current.drain_strategy is None and not drain_done:
                drain_done = True
                events.append(note(f"drain complete for node {nid}", SOURCE))

            if allocs_done and drain_done:
                return DrainResult(completed=True, events=events)
            if final or time.time_ns() >= give_up_ns:
                events.append(
                    note(
                        f"drain deadline reached for node {nid}: {running} allocations left",
                        SOURCE,
                    )
                )
                return DrainResult(completed=False, remaining=running, events=events)
            if time.monotonic() >= slice_end:
                return DrainResult(completed=False, remaining=running, events=events)
            heartbeat(
                {
                    "node": nid,
                    "drain_requested": True,
                    "running": running,
                    "drain_complete": drain_done,
                }
            )
            time.sleep(self.poll_s)

    @staticmethod
    def _requested_by_earlier_attempt(node: NomadNode, allocs: list[NomadAllocation]) -> bool:
        """Whether an earlier attempt of this first slice already asked Nomad to drain.

        Its heartbeat says so if one got through. Otherwise only a retry can have posted
        (a first attempt always posts, so a node an operator left ineligible is still
        drained), and Nomad clears ``DrainStrategy`` once a drain finishes, so a finished
        drain looks like none: it shows as an ineligible node with nothing left running,
        or a ``LastDrain`` naming our drain complete (allocations may still be stopping).
        """
        if _drain_requested_before(node.id):
            return True
        if _attempt() <= 1 or node.scheduling_eligibility != "ineligible":
            return False
        finished_ours = node.last_drain is not None and node.last_drain.finished_ours
        return finished_ours or not any(a.live for a in allocs)
