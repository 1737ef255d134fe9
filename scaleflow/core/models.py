"""Pydantic models shared by the workflows, activities and the API."""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from scaleflow.core.autoscale import AutoscalerConfig, AutoscalerState, NodeCounters, StatsSample
from scaleflow.core.autoscaling.decision import DecisionRecord, StrategyState
from scaleflow.core.autoscaling.policy_settings import AutoscalingSettings, Check
from scaleflow.core.slots import SlotMap

NAME_RE = re.compile(r"^[A-Za-z0-9@._-]{1,64}$")
# The control plane's own events carry the original scaler's source name, so that
# clients written against chemtrail keep working.
# Source of the events scaleflow writes itself; each surface names it its own way.
CONTROL_SOURCE = "scaleflow"


def pool_workflow_id(name: str) -> str:
    return f"pool/{name}"


def valid_name(name: str) -> bool:
    # fullmatch: "$" alone would let a trailing newline through.
    return bool(NAME_RE.fullmatch(name))


class NodeState(StrEnum):
    PROVISIONING = "provisioning"
    READY = "ready"
    DRAINING = "draining"
    TERMINATED = "terminated"


class Engine(StrEnum):
    MEMCACHED = "memcached"
    NOMAD = "nomad"
    NONE = "none"


class ProviderName(StrEnum):
    LOCAL = "local"
    NOOP = "no-op"
    AWS_AUTOSCALING = "aws-autoscaling"


class Selector(StrEnum):
    LEAST_BUSY = "least_busy"
    NEWEST = "newest"
    OLDEST = "oldest"


class Node(BaseModel):
    id: str
    address: str | None = None
    provider_ref: str = ""
    state: NodeState = NodeState.READY
    created_at: datetime
    # Engine-specific facts, e.g. the Nomad node id behind an instance.
    attributes: dict[str, str] = Field(default_factory=dict)


class PoolConfig(BaseModel):
    name: str
    enabled: bool = True
    engine: Engine = Engine.MEMCACHED
    provider: ProviderName = ProviderName.LOCAL
    provider_config: dict[str, str] = Field(default_factory=dict)
    min_count: int = Field(default=1, ge=0, le=10_000)
    max_count: int = Field(default=8, ge=0, le=10_000)
    scale_out_count: int = Field(default=1, ge=1, le=100)
    scale_in_count: int = Field(default=1, ge=1, le=100)
    selector: Selector = Selector.LEAST_BUSY
    drain_deadline_s: float = Field(default=300.0, ge=0, le=86_400)
    checks: dict[str, Check] = Field(default_factory=dict)
    # Nomad node class of the pool's nodes; the pool's name when unset.
    node_class: str | None = None
    capacity_mb: int = Field(default=64, ge=1, le=1_048_576)
    # memcached evicts by LRU, or (with -M) not at all and refuses writes when full.
    eviction: Literal["lru", "none"] = "lru"
    migration_limit: int = Field(default=2, ge=1, le=64)
    # How often clients re-read the slot map; migrations wait twice this before
    # copying and before purging, so that no client still uses an old map.
    client_refresh_s: float = Field(default=0.5, ge=0, le=60)
    # Caps a migration's copy (and purge) so that clients keep most of the CPU and
    # network while a pool resizes; each key counts as at least 1 KiB; 0: no cap.
    migration_rate_mb_s: float = Field(default=0.0, ge=0, le=100_000)
    # The policy's own autoscaler (checks or a target value over a metric source).
    autoscaling: AutoscalingSettings = Field(default_factory=AutoscalingSettings)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not valid_name(v):
            raise ValueError(f"invalid pool name {v!r}: use 1-64 of [A-Za-z0-9@._-]")
        return v

    @model_validator(mode="after")
    def _bounds(self) -> PoolConfig:
        if self.min_count > self.max_count:
            raise ValueError(
                f"min_count ({self.min_count}) must not exceed max_count ({self.max_count})"
            )
        return self

    @property
    def nomad_class(self) -> str:
        return self.node_class or self.name


class EventNote(BaseModel):
    """One line an activity adds to its operation's scaling events."""

    message: str
    source: str = CONTROL_SOURCE
    at_ns: int | None = None


class ActivityReport(BaseModel):
    events: list[EventNote] = Field(default_factory=list)


class OperationKind(StrEnum):
    SCALE_OUT = "scale-out"
    SCALE_IN = "scale-in"
    ROLLOUT = "config-rollout"
    DATA_CLEAR = "data-clear"


DIRECTIONS: dict[OperationKind, str] = {
    OperationKind.SCALE_OUT: "out",
    OperationKind.SCALE_IN: "in",
    OperationKind.ROLLOUT: "rollout",
    OperationKind.DATA_CLEAR: "clear",
}


def operation_summary(kind: OperationKind, pool: str, count: int, reason: str) -> str:
    """One line naming an operation, for the Temporal UI: "scale-out pool default by 1
    (manual)"."""
    if kind in (OperationKind.SCALE_OUT, OperationKind.SCALE_IN):
        return f"{kind.value} pool {pool} by {count} ({reason})"
    if kind is OperationKind.ROLLOUT:
        return f"config roll-out on pool {pool} ({reason})"
    return f"data clear of pool {pool} ({reason})"


class DataClearSpec(BaseModel):
    """What a data clear empties: the cache nodes always; S3 and RDS when asked."""

    s3: bool = False
    rds: bool = False


class CacheSettings(BaseModel):
    """What a config roll-out sets on every memcached node."""

    capacity_mb: int = Field(gt=0, le=1_048_576)
    eviction: Literal["lru", "none"] = "lru"


class OperationRequest(BaseModel):
    kind: OperationKind
    request_id: str = Field(min_length=1, max_length=200)
    count: int | None = Field(default=None, ge=1, le=100)
    reason: str = "api"
    cache: CacheSettings | None = None
    clear: DataClearSpec | None = None
    # Scale-in of these nodes (by id or address) instead of the selector's choice.
    nodes: list[str] | None = None
    # terminate_all: may go below min_count (the pool then tops itself up again).
    ignore_min: bool = False


class OperationAccepted(BaseModel):
    id: str
    duplicate: bool = False


class OperationInput(BaseModel):
    op_id: str
    pool: str
    kind: OperationKind
    count: int
    config: PoolConfig
    reason: str = "api"
    cache: CacheSettings | None = None
    clear: DataClearSpec | None = None
    nodes: list[str] | None = None
    # Given when the pool was idle at acceptance: the operation may start at once.
    snapshot: PoolSnapshot | None = None


class PoolSnapshot(BaseModel):
    """What an operation is given when its turn comes."""

    nodes: list[Node]
    slot_map: SlotMap = Field(default_factory=SlotMap)


class OperationResult(BaseModel):
    added: list[Node] = Field(default_factory=list)
    removed: list[str] = Field(default_factory=list)


class NodeChange(BaseModel):
    """An operation tells its pool that a node joined, changed state or left."""

    op_id: str
    node: Node
    # The slot map with the node in it, in the same signal (one round trip, not two).
    slot_map: SlotMap | None = None


class PolicyChange(BaseModel):
    config: PoolConfig


class PoolInit(BaseModel):
    config: PoolConfig
    has_policy: bool = True
    # Carried over by continue-as-new.
    nodes: list[Node] = Field(default_factory=list)
    requests: dict[str, str] = Field(default_factory=dict)
    sync_membership: bool = True
    slot_map: SlotMap = Field(default_factory=SlotMap)
    autoscaler: AutoscalerConfig = Field(default_factory=AutoscalerConfig)
    autoscaler_state: AutoscalerState = Field(default_factory=AutoscalerState)
    stats: list[StatsSample] = Field(default_factory=list)
    counters: dict[str, NodeCounters] = Field(default_factory=dict)
    # The policy autoscaler's state and the last decisions of either autoscaler.
    strategy_state: StrategyState = Field(default_factory=StrategyState)
    decisions: list[DecisionRecord] = Field(default_factory=list)


class PoolView(BaseModel):
    name: str
    config: PoolConfig
    has_policy: bool
    nodes: list[Node]
    queue: list[str]
    running: str | None
    autoscaler: AutoscalerConfig = Field(default_factory=AutoscalerConfig)


# ---- the scaling-event document (the seed's JSON names) ---------------------


class ScalingEventItem(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    timestamp: int = Field(alias="Timestamp")
    message: str = Field(alias="Message")
    source: str = Field(alias="Source")


OperationStatus = Literal["started", "in-progress", "success", "failed", "cancelled"]


class ScalingEvent(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    events: list[ScalingEventItem] = Field(alias="Events")
    direction: str = Field(alias="Direction")
    last_update: int = Field(alias="LastUpdate")
    status: OperationStatus = Field(alias="Status")
    provider: str = Field(alias="Provider")
    provider_cfg: dict[str, str] = Field(alias="ProviderCfg")


OperationInput.model_rebuild()
