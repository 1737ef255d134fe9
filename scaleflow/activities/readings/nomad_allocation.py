"""The allocated share of CPU and memory of a pool's Nomad nodes.

Nodes come from ``GET /v1/nodes?resources=true`` (their capacity, where Nomad includes
it; else ``GET /v1/node/:id``); allocations from ``GET /v1/node/:id/allocations``. Like
nomad-autoscaler's Nomad APM: capacity is NodeResources less ReservedResources (Resources
less Reserved before Nomad 0.9), and only ready, eligible, undrained nodes count.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from scaleflow.activities.nomad import (
    DEFAULT_CLASS,
    NOMAD_NODE_ID_ATTR,
    SOURCE,
    NomadAllocation,
    NomadClient,
    NomadNode,
    NomadNodeResources,
    NomadNodeStub,
    NomadNotFound,
    parse_reply,
)
from scaleflow.activities.notes import fatal, retryable
from scaleflow.core.autoscaling.allocation import NoCapacity, NodeAllocation, allocation_readings
from scaleflow.core.autoscaling.readings import Readings
from scaleflow.core.autoscaling.source_io import NomadAllocationInput
from scaleflow.core.settings import Settings


class LegacyResources(BaseModel):
    """``Resources`` / ``Reserved`` of nodes and allocations before Nomad 0.9."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    cpu: int = Field(default=0, alias="CPU")
    memory_mb: int = Field(default=0, alias="MemoryMB")


class Capacity(BaseModel):
    """The resource fields of a node (the full node, or a stub listed with resources)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    node_resources: NomadNodeResources | None = Field(default=None, alias="NodeResources")
    reserved_resources: NomadNodeResources | None = Field(default=None, alias="ReservedResources")
    resources: LegacyResources | None = Field(default=None, alias="Resources")
    reserved: LegacyResources | None = Field(default=None, alias="Reserved")

    def allocatable(self) -> tuple[int, int] | None:
        """(CPU MHz, memory MB) the scheduler may hand out; None if not given."""
        if self.node_resources is not None:
            res = self.reserved_resources or NomadNodeResources()
            return (
                self.node_resources.cpu.cpu_shares - res.cpu.cpu_shares,
                self.node_resources.memory.memory_mb - res.memory.memory_mb,
            )
        if self.resources is not None:
            res_old = self.reserved or LegacyResources()
            return (
                self.resources.cpu - res_old.cpu,
                self.resources.memory_mb - res_old.memory_mb,
            )
        return None


class StubWithCapacity(NomadNodeStub, Capacity):
    pass


class NodeWithCapacity(NomadNode, Capacity):
    pass


class AllocationUsage(NomadAllocation):
    resources: LegacyResources | None = Field(default=None, alias="Resources")

    def usage(self) -> tuple[int, int]:
        """(CPU MHz, memory MB) of the allocation's tasks."""
        tasks = (self.allocated_resources.tasks if self.allocated_resources else None) or {}
        if not tasks and self.resources is not None:
            return self.resources.cpu, self.resources.memory_mb
        return (
            sum(t.cpu.cpu_shares for t in tasks.values()),
            sum(t.memory.memory_mb for t in tasks.values()),
        )


class NomadUsageClient(NomadClient):
    """The engine's client, reading the resource fields its models leave out."""

    def nodes_with_resources(self) -> list[StubWithCapacity]:
        # resources=true: capacity in the list itself, not one read per node (older
        # Nomads ignore the parameter; their nodes are then read one by one).
        data = self._request("GET", "/v1/nodes?resources=true")
        return [parse_reply(StubWithCapacity, item) for item in data or []]

    def node_with_capacity(self, node_id: str) -> NodeWithCapacity:
        return parse_reply(NodeWithCapacity, self._request("GET", f"/v1/node/{node_id}"))

    def allocation_usage(self, node_id: str) -> list[AllocationUsage]:
        data = self._request("GET", f"/v1/node/{node_id}/allocations")
        return [parse_reply(AllocationUsage, item) for item in data or []]


def _schedulable(node: NomadNodeStub) -> bool:
    # nomad-autoscaler's default node filter: a node that is down, draining or
    # ineligible takes no new work, so its capacity is not the pool's.
    return node.status == "ready" and not node.drain and node.scheduling_eligibility != "ineligible"


class NomadAllocationReader:
    def __init__(self, settings: Settings) -> None:
        self.address = settings.nomad_address
        self.token = settings.nomad_token

    def read(self, req: NomadAllocationInput) -> Readings:
        with NomadUsageClient(self.address, self.token) as client:
            try:
                nodes = self._nodes(client, req)
                usage = [self._usage(client, node) for node in nodes]
            except NomadNotFound as exc:
                # Only the list itself can be missing: the address is not a Nomad API.
                raise fatal(f"nomad at {self.address}: {exc}", SOURCE) from exc
        counted = [u for u in usage if u is not None]
        try:
            readings = allocation_readings(counted, SOURCE)
        except NoCapacity as exc:
            # Nodes may still be joining; the next round reads again.
            among = f" among the pool's {len(req.nodes)}" if req.nodes else ""
            raise retryable(
                f"pool {req.pool}: {exc} (ready, eligible Nomad nodes of class "
                f"{req.node_class}{among})",
                SOURCE,
            ) from exc
        return Readings(readings=readings)

    def _nodes(
        self, client: NomadUsageClient, req: NomadAllocationInput
    ) -> list[StubWithCapacity | NodeWithCapacity]:
        """The Nomad nodes whose capacity is the pool's, each once."""
        stubs = client.nodes_with_resources()
        in_class = [s for s in stubs if (s.node_class or DEFAULT_CLASS) == req.node_class]
        if not req.nodes:
            return [s for s in in_class if _schedulable(s)]
        by_id = {s.id: s for s in stubs}
        by_instance: dict[str, NodeWithCapacity] = {}
        if any(not n.attributes.get(NOMAD_NODE_ID_ATTR) for n in req.nodes):
            # Only full nodes carry the instance id attribute: read the class's nodes once.
            for stub in in_class:
                full = self._full(client, stub.id)
                if full is not None and full.instance_id:
                    # A re-registered client leaves its old, down node behind: keep the live one.
                    seen = by_instance.get(full.instance_id)
                    if seen is None or seen.status != "ready":
                        by_instance[full.instance_id] = full
        found: dict[str, StubWithCapacity | NodeWithCapacity] = {}
        for node in req.nodes:
            nomad_id = node.attributes.get(NOMAD_NODE_ID_ATTR)
            match: StubWithCapacity | NodeWithCapacity | None
            if nomad_id:
                match = by_id.get(nomad_id) or self._full(client, nomad_id)
            else:
                match = by_instance.get(node.provider_ref) if node.provider_ref else None
            if match is not None and _schedulable(match):
                found[match.id] = match
        return list(found.values())

    @staticmethod
    def _full(client: NomadUsageClient, node_id: str) -> NodeWithCapacity | None:
        try:
            return client.node_with_capacity(node_id)
        except NomadNotFound:
            return None  # purged between the list and the read

    def _usage(
        self, client: NomadUsageClient, node: StubWithCapacity | NodeWithCapacity
    ) -> NodeAllocation | None:
        allocatable = node.allocatable()
        if allocatable is None:
            full = self._full(client, node.id)
            allocatable = full.allocatable() if full is not None else None
            if allocatable is None:
                return None
        try:
            allocs = client.allocation_usage(node.id)
        except NomadNotFound:
            return None  # purged since it was listed
        cpu = mem = 0
        for alloc in allocs:
            # Pending allocations hold their resources as running ones do.
            if alloc.live:
                used = alloc.usage()
                cpu, mem = cpu + used[0], mem + used[1]
        return NodeAllocation(
            node_id=node.id,
            cpu_allocatable_mhz=max(allocatable[0], 0),
            memory_allocatable_mb=max(allocatable[1], 0),
            cpu_allocated_mhz=cpu,
            memory_allocated_mb=mem,
        )
