"""What goes over the wire to and from the broker entity and its operations.

The API calls the entity's updates with these request models (one argument each, so
``api.deps.execute_update`` can send them) and reads ``BrokerReply``. Field checks that
have a seed error code (cluster names, node numbers, addresses) are left to the planner,
so a bad value gets the seed's code rather than a Pydantic error.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field

from scaleflow.core.broker.activity_io import LoopbackHost, ProvisionProxyInput, ProxyInfo
from scaleflow.core.broker.models import (
    BrokerConfig,
    BrokerMeta,
    Cluster,
    MigrationTask,
    ScaleOp,
)

DEFAULT_PING_INTERVAL_S = 1.0


def broker_workflow_id(name: str) -> str:
    return f"broker/{name}"


# ---- requests (update arguments) ------------------------------------------------------


class Request(BaseModel):
    # A client's request id: a repeated id gets the first answer (also across
    # continue-as-new), and ``api.deps.update_id`` makes it the update's id.
    request_id: str | None = None


class AddProxyRequest(Request):
    proxy_address: str
    nodes: list[str]
    host: str | None = None


class ProxyRequest(Request):
    """``remove_proxy`` and ``failover``."""

    proxy_address: str


class CreateClusterRequest(Request):
    name: str
    node_number: int


class ClusterRequest(Request):
    """``delete_cluster``, ``delete_free_nodes`` and ``balance``."""

    name: str


class NodesRequest(Request):
    """``add_nodes``: ``count`` more nodes. ``add_nodes_if_needed``: up to ``count`` nodes
    in all (the seed's ``cluster_node_number``)."""

    name: str
    count: int


class MigrateMode(StrEnum):
    AUTO = "auto"
    EXPAND = "expand"
    SHRINK = "shrink"


class MigrateRequest(Request):
    name: str
    mode: MigrateMode
    # auto and shrink: the node number wanted.
    node_number: int | None = None


class ClusterConfigRequest(Request):
    name: str
    # The seed's PATCH body as sent: unknown keys and bad values get INVALID_CONFIG.
    fields: dict[str, Any]


class EpochRequest(Request):
    """``PUT /api/v2/epoch/<n>``; without ``epoch``, the hidden ``epoch/recovery``."""

    epoch: int | None = None


class RestoreRequest(Request):
    meta: BrokerMeta


class FailureReportRequest(Request):
    proxy_address: str
    reporter: str


class CommitRequest(Request):
    task: MigrationTask


class BrokerConfigRequest(Request):
    config: BrokerConfig


class ProvisionProxiesRequest(Request):
    """Start proxies with the ``local`` provider and register them as free."""

    hosts: list[LoopbackHost] = Field(min_length=1)
    per_host: int = Field(default=1, ge=1, le=64)


class BrokerReply(BaseModel):
    """The answer to every update: the epoch after it, and the operation it started."""

    epoch: int
    # The operation's workflow id (``/v1/scale/status/<id>``), when Redis must change.
    operation: str | None = None
    scale_op: ScaleOp | None = None
    # provision_proxies: the proxies registered.
    proxies: list[str] = Field(default_factory=list)


# ---- the entity's own state -------------------------------------------------------------


class LocalProxy(BaseModel):
    proxy_id: str
    host: str

    def provision_input(self) -> ProvisionProxyInput:
        return ProvisionProxyInput(proxy_id=self.proxy_id, host=self.host)


class BrokerInit(BaseModel):
    """The entity's input, and what continue-as-new carries over."""

    name: str
    meta: BrokerMeta = Field(default_factory=BrokerMeta)
    config: BrokerConfig = Field(default_factory=BrokerConfig)
    ping_interval_s: float = Field(default=DEFAULT_PING_INTERVAL_S, gt=0)
    # undermoon's sync_meta_interval: how often the metadata goes to replica_addresses.
    replicate_interval_s: float = Field(default=10.0, gt=0)
    # Continue-as-new after this many clock ticks, if the server does not suggest it first.
    ticks_per_run: int = Field(default=1000, ge=1)
    # proxy address -> its local provider id: proxies this broker started itself.
    local_proxies: dict[str, LocalProxy] = Field(default_factory=dict)
    # Proxies out of a cluster whose nodes are not reset yet, and that cluster's name:
    # nobody may take them before (undermoon #151).
    held: dict[str, str] = Field(default_factory=dict)
    proxy_seq: int = 0
    replies: dict[str, BrokerReply] = Field(default_factory=dict)
    # cluster -> failed migration operations in a row, for the backoff of their retry.
    stalled: dict[str, int] = Field(default_factory=dict)


class OperationView(BaseModel):
    id: str
    kind: str
    cluster: str | None
    lane: str
    state: Literal["running", "queued"]
    reason: str


# ---- operations -------------------------------------------------------------------------


class OpKind(StrEnum):
    CREATE = "create"
    DELETE = "delete"
    ADD_NODES = "add-nodes"
    SCALE_OUT = "scale-out"
    MIGRATE = "migrate"
    SCALE_DOWN = "scale-down"
    REMOVE_FREE_NODES = "remove-free-nodes"
    FAILOVER = "failover"
    BALANCE = "balance"
    PROVISION = "provision-proxies"
    DESTROY = "destroy-proxies"


class StepAction(StrEnum):
    PROVISION = "provision"  # start (or find running) local proxies
    DESTROY = "destroy"  # stop local proxies and delete their state
    RESET = "reset"  # FLUSHALL + CLUSTER RESET HARD on nodes no cluster needs
    REMOVE = "remove"  # take nodes out of the cluster: reset them, the rest forget them
    FORM = "form"  # MEET, ADDSLOTSRANGE, REPLICATE to the cluster's recorded membership
    TAKEOVER = "takeover"  # make these nodes masters (CLUSTER FAILOVER [TAKEOVER])
    EXPAND = "expand"  # ask the entity to plan the expand, and wait for it
    MIGRATE = "migrate"  # carry out the recorded moves until none is left


class OpStep(BaseModel):
    action: StepAction
    nodes: list[str] = Field(default_factory=list)
    proxies: list[ProvisionProxyInput] = Field(default_factory=list)


class OpSnapshot(BaseModel):
    """The operation's cluster as the entity holds it now (None once deleted)."""

    epoch: int
    cluster: Cluster | None = None
    # Proxies known as failed: their nodes are left out of what must answer.
    failed_proxies: list[str] = Field(default_factory=list)
    # Tokens of the operation's own signals that the entity has handled.
    acks: list[str] = Field(default_factory=list)


class BrokerOpInput(BaseModel):
    op_id: str
    broker: str
    kind: OpKind
    cluster: str | None = None
    steps: list[OpStep]
    # Set when the entity was idle at the start: no need to wait for ``go``.
    snapshot: OpSnapshot | None = None


class BrokerOpResult(BaseModel):
    provisioned: list[ProxyInfo] = Field(default_factory=list)
    moves: int = 0


class MoveDone(BaseModel):
    """An operation finished a move: the entity commits it (and acks ``token``)."""

    op_id: str
    task: MigrationTask
    token: str


class OpAck(BaseModel):
    op_id: str
    token: str
