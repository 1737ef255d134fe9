"""Bodies of the undermoon memory broker surface (``/api/v2``): requests, answers, errors.

Request bodies are read by the router itself (``routes.broker``), so that a body that is
not what a route takes gets the seed's error code for that route rather than a generic
validation error. These models are what it validates them with, and what the OpenAPI
document shows.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from scaleflow.core.broker.models import (
    BrokerConfig,
    BrokerMeta,
    Cluster,
    ClusterConfig,
    ClusterInfo,
    CompressionStrategy,
    ImportingTag,
    MigratingTag,
    Node,
    SlotRange,
)
from scaleflow.core.broker.validation import MAX_NODE_NUMBER
from scaleflow.core.slots import SLOTS

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

# What ``core.broker.validation`` accepts, as the document's patterns.
CLUSTER_NAME_PATTERN = r"^[A-Za-z0-9@_-]{1,30}$"
_PORT = r"0*(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})"
# host:port: one colon, a host of anything else, a port from 1 to 65535.
ADDRESS_PATTERN = r"^[^:]+:" + _PORT + "$"
MAX_ADDRESS_LEN = 300
U64_MAX = 2**64 - 1
Address = Annotated[
    StrictStr,
    Field(pattern=ADDRESS_PATTERN, max_length=MAX_ADDRESS_LEN, examples=["127.0.0.2:7000"]),
]
NodeNumber = Annotated[
    StrictInt,
    Field(
        ge=4,
        le=MAX_NODE_NUMBER,
        multiple_of=4,
        description="A positive multiple of 4 (a chunk is 4 nodes)",
        examples=[8],
    ),
]


# ---- examples (checked against their models when this module loads) ---------------


def _node(address: str, proxy: str, role: str, peer: str, peer_proxy: str, slots: Any) -> Any:
    return {
        "address": address,
        "proxy_address": proxy,
        "cluster_name": "mycluster",
        "slots": [{"range_list": slots, "tag": "None"}] if slots else [],
        "repl": {"role": role, "peers": [{"node_address": peer, "proxy_address": peer_proxy}]},
    }


# One chunk: node i's peer is node 3 - i; nodes 0 and 2 are the masters.
_A, _B = "127.0.0.2:7000", "127.0.0.3:7000"
_NODES = [
    _node("127.0.0.2:6000", _A, "master", "127.0.0.3:6001", _B, [[0, 8191]]),
    _node("127.0.0.2:6001", _A, "replica", "127.0.0.3:6000", _B, None),
    _node("127.0.0.3:6000", _B, "master", "127.0.0.2:6001", _A, [[8192, 16383]]),
    _node("127.0.0.3:6001", _B, "replica", "127.0.0.2:6000", _A, None),
]
_CONFIG = {"compression_strategy": "disabled", "migration_limit": 2}
CLUSTER_EXAMPLE = Cluster.model_validate(
    {"name": "mycluster", "epoch": 3, "nodes": _NODES, "config": _CONFIG}
).model_dump(mode="json")
PROXY_EXAMPLE = {
    "address": _A,
    "epoch": 3,
    "cluster_name": "mycluster",
    "nodes": _NODES[:2],
    "free_nodes": [],
    "peers": [{"proxy_address": _B, "cluster_name": "mycluster", "slots": _NODES[2]["slots"]}],
    "clusters_config": {"mycluster": _CONFIG},
}
# The seed's sample of GET /api/v2/metadata.
META_EXAMPLE = {
    "version": "mem-broker-0.1",
    "global_epoch": 0,
    "clusters": {},
    "all_proxies": {},
    "failed_proxies": [],
    "failures": {},
}
CLUSTER_INFO_EXAMPLE = {
    "name": "cluster_name",
    "node_number": 8,
    "node_number_with_slots": 8,
    "is_migrating": False,
}
BROKER_CONFIG_EXAMPLE = {
    "failure_quorum": 1,
    "failure_ttl": 60.0,
    "replica_addresses": ["127.0.0.1:17799", "127.0.0.1:27799"],
    "auto_failover": True,
}


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

    model_config = ConfigDict(json_schema_extra={"examples": [{"node_number": 8}]})

    node_number: NodeNumber


class AddNodesBody(BaseModel):
    """``PATCH /api/v2/clusters/nodes/<cluster_name>``: nodes to add."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"node_number": 8}]})

    node_number: NodeNumber


class ScaleUpNodesBody(BaseModel):
    """``PUT /api/v2/clusters/nodes/<cluster_name>``: the node number wanted in all;
    NODE_NUM_ALREADY_ENOUGH if it is not above the cluster's."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"cluster_node_number": 8}]})

    cluster_node_number: NodeNumber


def any_case(word: str) -> str:
    """A pattern of ``word`` in any case, for a name the entity reads case-blind."""
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else re.escape(c) for c in word)


# ``PATCH /api/v2/clusters/config/<cluster_name>``, as ``core.broker.clusters`` reads it:
# field names and strategies in any case, a limit as a number or its decimal digits.
# Every field is optional (one left out keeps its value); any other is INVALID_CONFIG.
CLUSTER_CONFIG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "patternProperties": {
        f"^{any_case('compression_strategy')}$": {
            "type": "string",
            "pattern": "^(" + "|".join(any_case(c.value) for c in CompressionStrategy) + ")$",
            "description": "disabled, set_get_only or allow_all (any case)",
        },
        f"^{any_case('migration_limit')}$": {
            "anyOf": [
                {"type": "integer", "minimum": 1},
                {"type": "string", "pattern": "^0*[1-9][0-9]*$"},
            ],
            "description": "Slot moves that may run at once (default 2): a positive integer, "
            "or its decimal digits",
        },
    },
    "additionalProperties": False,
    "examples": [{"compression_strategy": "set_get_only"}],
}


class AddProxyBody(BaseModel):
    """``POST /api/v2/proxies/meta``: a proxy of two Redis nodes, free for any cluster."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "proxy_address": "127.0.0.1:7000",
                    "nodes": ["127.0.0.1:6000", "127.0.0.1:6001"],
                    "host": "127.0.0.1",
                }
            ]
        }
    )

    proxy_address: Address
    nodes: list[Address] = Field(
        min_length=2,
        max_length=2,
        description="Its two node addresses (host:port), distinct",
        examples=[["127.0.0.2:7000", "127.0.0.2:7001"]],
        json_schema_extra={"uniqueItems": True},
    )
    host: StrictStr | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_ADDRESS_LEN,
        description="Defaults to the host of proxy_address",
    )


class BrokerConfigBody(BaseModel):
    """``PUT /api/v2/config``. ``replica_addresses`` as the seed; the other fields are
    scaleflow's and keep their value when left out."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"replica_addresses": ["127.0.0.1:17799"]}]},
    )

    replica_addresses: list[Address] = Field(examples=[["127.0.0.1:17799"]])
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
    model_config = ConfigDict(json_schema_extra={"examples": [{"names": ["mycluster"]}]})

    names: list[str]


class AddressesPayload(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"addresses": ["127.0.0.2:7000", "127.0.0.3:7000"]}]}
    )

    addresses: list[str]


class ClusterPayload(BaseModel):
    """The cluster as proxies should see it now (moves held back by the migration limit
    show as stable on their source), or null."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"cluster": CLUSTER_EXAMPLE}]})

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
    model_config = ConfigDict(json_schema_extra={"examples": [{"proxy": PROXY_EXAMPLE}]})

    proxy: ProxyView | None


class FailureCheckPayload(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"hosts_cannot_fail": []}]})

    hosts_cannot_fail: list[str] = Field(
        description="Hosts whose loss could not be repaired with the free proxies"
    )


class MigrationSlotRange(BaseModel):
    """A moving range: ``[start, end]`` pairs (start <= end) and its migration tag."""

    range_list: list[
        tuple[Annotated[int, Field(ge=0, lt=SLOTS)], Annotated[int, Field(ge=0, lt=SLOTS)]]
    ] = Field(default_factory=list, description="[start, end] pairs, start <= end")
    tag: MigratingTag | ImportingTag


class MigrationTaskBody(BaseModel):
    """``PUT /api/v2/clusters/migrations``: a move that is done (the coordinator's
    commit); its slots become stable on the destination."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "cluster_name": "mycluster",
                    "slot_range": {
                        "range_list": [[0, 4095]],
                        "tag": {
                            "Migrating": {
                                "epoch": 7,
                                "src_proxy_address": "127.0.0.2:7000",
                                "src_node_address": "127.0.0.2:6000",
                                "dst_proxy_address": "127.0.0.3:7000",
                                "dst_node_address": "127.0.0.3:6000",
                            }
                        },
                    },
                }
            ]
        }
    )

    cluster_name: str = Field(pattern=CLUSTER_NAME_PATTERN)
    slot_range: MigrationSlotRange


# The examples are the models' own: a model change that breaks one fails here.
ProxyPayload.model_validate({"proxy": PROXY_EXAMPLE})
BrokerMeta.model_validate(META_EXAMPLE)
ClusterInfo.model_validate(CLUSTER_INFO_EXAMPLE)
BrokerConfig.model_validate(BROKER_CONFIG_EXAMPLE)
