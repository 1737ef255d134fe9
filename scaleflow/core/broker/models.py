"""The broker's metadata as Pydantic models, in undermoon's JSON shapes.

A cluster's ``nodes`` are stored chunk by chunk, four at a time: nodes 0 and 1 sit
on the chunk's first proxy, nodes 2 and 3 on its second, and the replication peer
of node i is node 3 - i. A master's slots are on the master node itself, so a
failover moves them to the peer.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, Field

from scaleflow.core.slots import SLOTS

META_VERSION = "mem-broker-0.1"
UNDERMOON_VERSION = "0.3.0"
NODES_PER_PROXY = 2
CHUNK_NODES = 4
DEFAULT_MIGRATION_LIMIT = 2
DEFAULT_FAILURE_QUORUM = 1
DEFAULT_FAILURE_TTL_S = 60.0


def _check_range(r: tuple[int, int]) -> tuple[int, int]:
    start, end = r
    if not 0 <= start <= end < SLOTS:
        raise ValueError(f"slot range {start}-{end} is not within 0-{SLOTS - 1}")
    return r


# [start, end], both inclusive, as Redis Cluster and undermoon write them.
Range = Annotated[tuple[int, int], AfterValidator(_check_range)]


class Role(StrEnum):
    MASTER = "master"
    REPLICA = "replica"


class ReplPeer(BaseModel):
    node_address: str
    proxy_address: str


class ReplMeta(BaseModel):
    role: Role
    peers: list[ReplPeer] = Field(default_factory=list)


class MigrationMeta(BaseModel):
    epoch: int
    src_proxy_address: str
    src_node_address: str
    dst_proxy_address: str
    dst_node_address: str


class MigratingTag(BaseModel):
    Migrating: MigrationMeta


class ImportingTag(BaseModel):
    Importing: MigrationMeta


class SlotRange(BaseModel):
    """Slots of one node; ``tag`` is ``"None"`` for stable slots, as undermoon writes it."""

    range_list: list[Range] = Field(default_factory=list)
    tag: Literal["None"] | MigratingTag | ImportingTag = "None"

    @property
    def is_stable(self) -> bool:
        return self.tag == "None"

    @property
    def is_migrating(self) -> bool:
        return isinstance(self.tag, MigratingTag)

    @property
    def is_importing(self) -> bool:
        return isinstance(self.tag, ImportingTag)

    @property
    def meta(self) -> MigrationMeta | None:
        if isinstance(self.tag, MigratingTag):
            return self.tag.Migrating
        if isinstance(self.tag, ImportingTag):
            return self.tag.Importing
        return None


class Node(BaseModel):
    address: str
    proxy_address: str
    cluster_name: str
    slots: list[SlotRange] = Field(default_factory=list)
    repl: ReplMeta


class CompressionStrategy(StrEnum):
    DISABLED = "disabled"
    SET_GET_ONLY = "set_get_only"
    ALLOW_ALL = "allow_all"


class ClusterConfig(BaseModel):
    compression_strategy: CompressionStrategy = CompressionStrategy.DISABLED
    # Moves that may run at once; a source never has more than one outgoing move.
    migration_limit: int = Field(default=DEFAULT_MIGRATION_LIMIT, ge=1)


class Cluster(BaseModel):
    name: str
    epoch: int
    nodes: list[Node] = Field(default_factory=list)
    config: ClusterConfig = Field(default_factory=ClusterConfig)


class ClusterInfo(BaseModel):
    name: str
    node_number: int
    node_number_with_slots: int
    is_migrating: bool


class ProxyResource(BaseModel):
    proxy_address: str
    node_addresses: tuple[str, str]
    host: str
    # The cluster using this proxy; None while it is free.
    cluster: str | None = None


class BrokerMeta(BaseModel):
    """What ``GET /api/v2/metadata`` answers and ``PUT`` restores."""

    version: str = META_VERSION
    global_epoch: int = 0
    clusters: dict[str, Cluster] = Field(default_factory=dict)
    all_proxies: dict[str, ProxyResource] = Field(default_factory=dict)
    failed_proxies: list[str] = Field(default_factory=list)
    # proxy address -> reporter id -> report time (seconds since the epoch).
    failures: dict[str, dict[str, float]] = Field(default_factory=dict)


class BrokerConfig(BaseModel):
    """The broker's own settings; kept out of ``BrokerMeta`` so replicas keep theirs."""

    failure_quorum: int = Field(default=DEFAULT_FAILURE_QUORUM, ge=1)
    failure_ttl: float = Field(default=DEFAULT_FAILURE_TTL_S, gt=0)
    replica_addresses: list[str] = Field(default_factory=list)
    # undermoon's #277: operators asked to be able to turn automatic failover off.
    auto_failover: bool = True


class MigrationTask(BaseModel):
    """One move, as the base API's ``PUT .../clusters/migrations`` commits it."""

    cluster_name: str
    slot_range: SlotRange


class ScaleOp(StrEnum):
    NOOP = "noop"
    SCALE_OUT = "scale_out"
    SCALE_DOWN = "scale_down"
