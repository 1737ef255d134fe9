"""Inputs and results of the broker's activities: local proxies and Redis Cluster nodes.

Pure models (Pydantic over the wire). Addresses are ``host:port`` strings, as in the
broker's metadata; slot ranges are ``(start, end)`` with both ends inclusive.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, Field, computed_field, model_validator

from scaleflow.core.broker.models import BrokerMeta, Cluster, ProxyResource, Range, Role
from scaleflow.core.broker.validation import valid_address
from scaleflow.core.models import ActivityReport

PROXY_ID_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")


def _check_address(address: str) -> str:
    if not valid_address(address):
        raise ValueError(f"invalid address {address!r}: use host:port")
    return address


def _check_proxy_id(proxy_id: str) -> str:
    # It names files in the state dir: no path separators, no leading dot.
    if not PROXY_ID_RE.fullmatch(proxy_id):
        raise ValueError(f"invalid proxy id {proxy_id!r}: use 1-100 of [A-Za-z0-9_.-]")
    return proxy_id


def _check_host(host: str) -> str:
    """127.0.0.N, 2 <= N <= 254: one loopback address per simulated host."""
    parts = host.split(".")
    last = parts[3] if len(parts) == 4 and parts[:3] == ["127", "0", "0"] else ""
    # 127.0.0.1 is left to the machine's own services (its Redis listens on 6379 there).
    if not (last.isascii() and last.isdigit() and str(int(last)) == last and 2 <= int(last) <= 254):
        raise ValueError(f"invalid host {host!r}: use a loopback address 127.0.0.N, 2 <= N <= 254")
    return host


Address = Annotated[str, AfterValidator(_check_address)]
ProxyId = Annotated[str, AfterValidator(_check_proxy_id)]
LoopbackHost = Annotated[str, AfterValidator(_check_host)]


# ---- local proxies -----------------------------------------------------------------


class ProvisionProxyInput(BaseModel):
    proxy_id: ProxyId
    host: LoopbackHost


class ProxyInfo(BaseModel):
    """A proxy: two redis-server processes in cluster mode on one host."""

    proxy_id: str
    host: str
    node_addresses: tuple[str, str]
    # None while a process is not running.
    pids: tuple[int | None, int | None] = (None, None)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def proxy_address(self) -> str:
        # Clients use the first node as a seed node.
        return self.node_addresses[0]

    @property
    def running(self) -> bool:
        return all(p is not None for p in self.pids)

    def resource(self) -> ProxyResource:
        return ProxyResource(
            proxy_address=self.proxy_address, node_addresses=self.node_addresses, host=self.host
        )


class ProvisionProxyResult(ActivityReport):
    proxy: ProxyInfo


class DestroyProxyInput(BaseModel):
    proxy_id: ProxyId


class ListProxiesResult(ActivityReport):
    proxies: list[ProxyInfo] = Field(default_factory=list)


# ---- forming a cluster (create and add nodes) ----------------------------------------


class ClusterNodeSpec(BaseModel):
    address: Address
    role: Role
    # Replicas: the address of their master.
    master: Address | None = None
    # Masters: their slots; taken when no node owns them yet, in a create only (see
    # FormClusterInput.assign_slots).
    slots: list[Range] = Field(default_factory=list)

    @model_validator(mode="after")
    def _role_fields(self) -> ClusterNodeSpec:
        if self.role == Role.REPLICA and (self.master is None or self.slots):
            raise ValueError(f"replica {self.address} needs a master and no slots")
        if self.role == Role.MASTER and self.master is not None:
            raise ValueError(f"master {self.address} cannot have a master")
        return self


class FormClusterInput(BaseModel):
    """The whole membership wanted: for a create, every node; for an add, old and new."""

    nodes: list[ClusterNodeSpec] = Field(min_length=1)
    timeout_s: float = Field(default=30.0, gt=0)
    # Give the masters the slots no node owns yet: only for a new cluster. In any other
    # membership such a slot's keys are on a node the members do not see (say, the
    # only ones that hold them were left out as failed), and an empty master that
    # took the slot would serve it empty.
    assign_slots: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> FormClusterInput:
        by_address = {n.address: n for n in self.nodes}
        if len(by_address) != len(self.nodes):
            raise ValueError("a node is listed twice")
        owned: set[int] = set()
        for n in self.nodes:
            if n.master is not None:
                m = by_address.get(n.master)
                if m is None or m.role != Role.MASTER:
                    raise ValueError(f"the master {n.master} of {n.address} is not a listed master")
            for start, end in n.slots:
                r = set(range(start, end + 1))
                if owned & r:
                    raise ValueError(f"slots {start}-{end} are given to two masters")
                owned |= r
        return self


class FormClusterResult(ActivityReport):
    # address -> Redis Cluster node id
    node_ids: dict[str, str] = Field(default_factory=dict)


def form_input_for(
    cluster: Cluster, timeout_s: float = 30.0, assign_slots: bool = False
) -> FormClusterInput:
    """The membership of a broker cluster as its metadata records it.

    A master's slots are its stable and migrating ranges: an importing range is still
    owned by its source until the move commits. ``assign_slots`` only for a create.
    """
    specs = []
    for node in cluster.nodes:
        if node.repl.role == Role.MASTER:
            owned = [r for s in node.slots if not s.is_importing for r in s.range_list]
            specs.append(ClusterNodeSpec(address=node.address, role=Role.MASTER, slots=owned))
        else:
            master = node.repl.peers[0].node_address if node.repl.peers else None
            specs.append(ClusterNodeSpec(address=node.address, role=Role.REPLICA, master=master))
    return FormClusterInput(nodes=specs, timeout_s=timeout_s, assign_slots=assign_slots)


# ---- slot migration -------------------------------------------------------------------


class MigrateSlotsInput(BaseModel):
    source: Address
    target: Address
    ranges: list[Range] = Field(min_length=1)
    # Slots that share one MIGRATING window: small, so a same-slot MSET is never held
    # off (TRYAGAIN) for long.
    slots_per_group: int = Field(default=8, ge=1, le=1024)
    # Keys per MIGRATE; at most what Lua's unpack() takes (the source runs the MIGRATEs).
    keys_per_batch: int = Field(default=100, ge=1, le=5_000)
    # MIGRATE commands per slot and round, run by the source in one script call.
    pipeline_depth: int = Field(default=8, ge=1, le=256)
    # Pacing: while the source serves clients, each round that kept it busy moving keys
    # for t is followed by a pause of t * pace_ratio, so the clients get the node (and
    # the cores) back. 0: never pause. Without client traffic nothing pauses.
    pace_ratio: float = Field(default=3.0, ge=0, le=100)
    # How often the source's client traffic is looked at (INFO commandstats).
    pace_check_s: float = Field(default=0.5, gt=0)
    # MIGRATE's timeout: the longest the link to the target may stay idle.
    migrate_timeout_ms: int = Field(default=10_000, ge=100)
    # A slot with at most this many keys moves in one atomic step when the target may
    # be unknown to clients (see ``MigrateSlotsProgress.handover``).
    handover_max_keys: int = Field(default=1_000, ge=0)
    # Count the bytes moved (MEMORY USAGE of each key; a little extra work per key).
    count_bytes: bool = True

    @model_validator(mode="after")
    def _distinct(self) -> MigrateSlotsInput:
        if self.source == self.target:
            raise ValueError("source and target are the same node")
        return self

    def label(self) -> str:
        return ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in self.ranges)


class MigrateSlotsProgress(BaseModel):
    """Heartbeat details: where a resumed migration carries on."""

    range_index: int = 0
    next_slot: int
    keys: int = 0
    bytes: int = 0
    slots_done: int = 0
    # The target owned no slot outside these ranges when the move began, so clients may
    # not know it and an ASK naming it would crash redis-py (#4015): each slot is handed
    # over in one atomic step (no ASK, no MOVED back and forth) instead of going through a
    # MIGRATING/IMPORTING window.
    handover: bool = False


class MigrateSlotsResult(ActivityReport):
    keys: int
    bytes: int
    slots: int
    # The slot the run resumed at, when it resumed from heartbeat details.
    resumed_at: int | None = None
    handovers: int = 0


# ---- failover, removal, pings, shards ------------------------------------------------


class FailoverInput(BaseModel):
    """Promote a replica: gracefully while its master answers, else by TAKEOVER."""

    replica: Address
    timeout_s: float = Field(default=10.0, gt=0)


class FailoverResult(ActivityReport):
    master: str
    # The master it replaced (None when the replica already was a master).
    replaced: str | None = None


class RemoveNodesInput(BaseModel):
    remove: list[Address] = Field(min_length=1)
    # The nodes that stay in the cluster; each must forget the removed ones.
    keep: list[Address] = Field(default_factory=list)
    timeout_s: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _disjoint(self) -> RemoveNodesInput:
        if set(self.remove) & set(self.keep):
            raise ValueError("a node is both removed and kept")
        return self


class RemoveNodesResult(ActivityReport):
    reset: list[str] = Field(default_factory=list)
    # Removed nodes that did not answer; the kept nodes forgot them all the same.
    unreachable: list[str] = Field(default_factory=list)


class PingNodesInput(BaseModel):
    addresses: list[Address]
    timeout_s: float = Field(default=0.5, gt=0)


class PingNodesResult(BaseModel):
    alive: list[str] = Field(default_factory=list)
    dead: list[str] = Field(default_factory=list)


class ReadShardsInput(BaseModel):
    # Any node of the cluster; the first that answers is read.
    seeds: list[Address] = Field(min_length=1)


class ShardNode(BaseModel):
    id: str
    address: str
    role: Role
    health: str


class Shard(BaseModel):
    ranges: list[tuple[int, int]] = Field(default_factory=list)
    nodes: list[ShardNode] = Field(default_factory=list)

    @property
    def master(self) -> ShardNode | None:
        return next((n for n in self.nodes if n.role == Role.MASTER), None)


class ReadShardsResult(BaseModel):
    read_from: str
    shards: list[Shard] = Field(default_factory=list)

    def masters_slots(self) -> dict[str, list[tuple[int, int]]]:
        """master address -> its slot ranges (masters without slots included)."""
        out: dict[str, list[tuple[int, int]]] = {}
        for shard in self.shards:
            if shard.master is not None:
                out[shard.master.address] = sorted(shard.ranges)
        return out

    def replicas_of(self) -> dict[str, str]:
        """replica address -> master address."""
        out = {}
        for shard in self.shards:
            if shard.master is not None:
                for n in shard.nodes:
                    if n.role == Role.REPLICA:
                        out[n.address] = shard.master.address
        return out


class ReplicateMetaInput(BaseModel):
    """``PUT /api/v2/metadata`` of ``meta`` to each broker in ``addresses``."""

    addresses: list[str]
    meta: BrokerMeta


class ReplicateMetaResult(BaseModel):
    # address -> why its PUT failed; absent: the replica took it (or already had it).
    failed: dict[str, str] = Field(default_factory=dict)
