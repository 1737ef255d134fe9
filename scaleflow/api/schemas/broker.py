"""Bodies of the undermoon memory broker surface (``/api/v2``): requests, answers, errors.

Request bodies are read by the router itself (``routes.broker``), so that a body that is
not what a route takes gets the seed's error code for that route rather than a generic
validation error. These models are what it validates them with, and what the OpenAPI
document shows.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from scaleflow.core.broker.models import (
    Cluster,
    ClusterConfig,
    CompressionStrategy,
    Node,
    SlotRange,
)

# Codes of this API that are not in the seed: a body, path or query that is not what the
# route takes and that no seed code describes, and errors outside the broker itself.
INVALID_REQUEST = "INVALID_REQUEST"
CODE_BY_STATUS: dict[int, str] = {
    400: INVALID_REQUEST,
    401: "UNAUTHORIZED",  # no or a wrong bearer token (SCALEFLOW_API_TOKEN)
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "RETRY",
    429: "RETRY",
}
UNAVAILABLE = "UNAVAILABLE"  # Temporal could not answer (any 5xx)


# ---- errors ------------------------------------------------------------------------


class ErrorBody(BaseModel):
    """The seed's error body: ``{"error": "CODE"}``."""

    error: str = Field(description="The error code", examples=["CLUSTER_NOT_FOUND"])


class DetailedErrorBody(ErrorBody):
    """An error this API adds to the seed's codes (``INVALID_REQUEST``, ``UNAUTHORIZED``,
    ``NOT_FOUND``, ``METHOD_NOT_ALLOWED``, ``UNAVAILABLE``): the code and what was wrong."""

    message: str


class InvalidConfigBody(ErrorBody):
    """``INVALID_CONFIG``, with the field and value that were refused."""

    key: str
    value: str
    message: str


# ---- requests ----------------------------------------------------------------------


class CreateClusterBody(BaseModel):
    """``POST /api/v2/clusters/meta/<cluster_name>``."""

    node_number: StrictInt = Field(description="A positive multiple of 4", examples=[8])


class AddNodesBody(BaseModel):
    """``PATCH /api/v2/clusters/nodes/<cluster_name>``: nodes to add."""

    node_number: StrictInt = Field(description="A positive multiple of 4", examples=[8])


class ScaleUpNodesBody(BaseModel):
    """``PUT /api/v2/clusters/nodes/<cluster_name>``: the node number wanted in all."""

    cluster_node_number: StrictInt = Field(
        description="A positive multiple of 4; NODE_NUM_ALREADY_ENOUGH if not above the "
        "cluster's node number",
        examples=[8],
    )


class ClusterConfigBody(BaseModel):
    """``PATCH /api/v2/clusters/config/<cluster_name>``: the fields to change (any other
    key is refused with ``INVALID_CONFIG``)."""

    model_config = ConfigDict(extra="allow")

    compression_strategy: Literal["disabled", "set_get_only", "allow_all"] | None = Field(
        default=None, examples=[CompressionStrategy.SET_GET_ONLY.value]
    )
    migration_limit: int | None = Field(
        default=None, ge=1, description="Slot moves that may run at once (default 2)"
    )


class AddProxyBody(BaseModel):
    """``POST /api/v2/proxies/meta``: a proxy of two Redis nodes, free for any cluster."""

    proxy_address: StrictStr = Field(examples=["127.0.0.2:7000"])
    nodes: list[StrictStr] = Field(
        description="Its two node addresses (host:port)",
        examples=[["127.0.0.2:7000", "127.0.0.2:7001"]],
    )
    host: StrictStr | None = Field(
        default=None, description="Defaults to the host of proxy_address"
    )


class BrokerConfigBody(BaseModel):
    """``PUT /api/v2/config``. ``replica_addresses`` as the seed; the other fields are
    scaleflow's and keep their value when left out."""

    model_config = ConfigDict(extra="forbid")

    replica_addresses: list[StrictStr] = Field(examples=[["127.0.0.1:17799"]])
    failure_quorum: StrictInt | None = Field(
        default=None, ge=1, description="Reporters needed to count a proxy as failed"
    )
    failure_ttl: float | None = Field(
        default=None, gt=0, le=86_400, description="Seconds a failure report counts"
    )
    auto_failover: StrictBool | None = Field(
        default=None, description="Fail over failed proxies by itself (undermoon #277)"
    )


# ---- answers -----------------------------------------------------------------------


class ClusterNamesPayload(BaseModel):
    names: list[str]


class AddressesPayload(BaseModel):
    addresses: list[str]


class ClusterPayload(BaseModel):
    """The cluster as proxies should see it now (moves held back by the migration limit
    show as stable on their source), or null."""

    cluster: Cluster | None


class PeerProxy(BaseModel):
    proxy_address: str
    cluster_name: str
    slots: list[SlotRange]


class ProxyView(BaseModel):
    """A proxy as undermoon's base broker API shows it."""

    address: str
    epoch: int
    cluster_name: str | None
    nodes: list[Node]
    # A free proxy's node addresses.
    free_nodes: list[str]
    peers: list[PeerProxy]
    clusters_config: dict[str, ClusterConfig]


class ProxyPayload(BaseModel):
    proxy: ProxyView | None


class FailureCheckPayload(BaseModel):
    hosts_cannot_fail: list[str] = Field(
        description="Hosts whose loss could not be repaired with the free proxies"
    )
