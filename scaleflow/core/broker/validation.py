"""Checks of names, node numbers and addresses, raising the seed's error codes."""

from __future__ import annotations

import re

from scaleflow.core.broker.errors import BrokerError, BrokerErrorCode
from scaleflow.core.broker.models import CHUNK_NODES
from scaleflow.core.slots import SLOTS

# ASCII only: str.isalnum would also accept other scripts' letters.
CLUSTER_NAME_RE = re.compile(r"[A-Za-z0-9@_-]{1,30}")
# Each master needs at least one slot, and a chunk holds two masters in four nodes.
MAX_NODE_NUMBER = SLOTS * 2


def validate_cluster_name(name: object) -> str:
    if not isinstance(name, str) or not CLUSTER_NAME_RE.fullmatch(name):
        raise BrokerError(
            BrokerErrorCode.INVALID_CLUSTER_NAME,
            f"invalid cluster name {name!r}: use 1-30 of [A-Za-z0-9@_-]",
        )
    return name


def validate_node_number(number: object) -> int:
    """A positive multiple of 4: a chunk is 4 nodes."""
    if (
        isinstance(number, bool)
        or not isinstance(number, int)
        or number <= 0
        or number % CHUNK_NODES
        or number > MAX_NODE_NUMBER
    ):
        raise BrokerError(
            BrokerErrorCode.INVALID_NODE_NUMBER,
            f"invalid node number {number!r}: use a positive multiple of {CHUNK_NODES}",
        )
    return number


def valid_address(address: object) -> bool:
    """``host:port`` with one colon, as undermoon requires."""
    if not isinstance(address, str) or address.count(":") != 1:
        return False
    host, port = address.split(":")
    if not host or not port.isascii() or not port.isdigit():
        return False
    return 0 < int(port) < 65536


def host_of(address: str) -> str:
    return address.split(":")[0]


def validate_proxy(proxy_address: object, nodes: object) -> tuple[str, tuple[str, str]]:
    if not valid_address(proxy_address):
        raise BrokerError(
            BrokerErrorCode.INVALID_PROXY_ADDRESS,
            f"invalid proxy address {proxy_address!r}: use host:port",
        )
    if (
        not isinstance(nodes, list | tuple)
        or len(nodes) != 2
        or not all(valid_address(n) for n in nodes)
        or nodes[0] == nodes[1]
    ):
        raise BrokerError(
            BrokerErrorCode.INVALID_PROXY_ADDRESS,
            f"a proxy needs two distinct node addresses (host:port), got {nodes!r}",
        )
    return str(proxy_address), (str(nodes[0]), str(nodes[1]))
