"""Proxies and clusters: register, create, grow, drop free nodes, configure, delete."""

from __future__ import annotations

from collections.abc import Mapping

from scaleflow.core.broker import ranges
from scaleflow.core.broker.allocation import allocate_chunks
from scaleflow.core.broker.chunks import (
    chunk_count,
    chunk_proxies,
    even_split,
    free_master_indexes,
    get_cluster,
    is_migrating,
    master_index,
    new_chunk_nodes,
    proxy_addresses,
)
from scaleflow.core.broker.epochs import bump
from scaleflow.core.broker.errors import BrokerError, BrokerErrorCode
from scaleflow.core.broker.models import (
    CHUNK_NODES,
    BrokerMeta,
    Cluster,
    ClusterConfig,
    CompressionStrategy,
    ProxyResource,
)
from scaleflow.core.broker.validation import (
    host_of,
    validate_cluster_name,
    validate_node_number,
    validate_proxy,
)


def add_proxy(
    meta: BrokerMeta, proxy_address: str, nodes: list[str], host: str | None = None
) -> BrokerMeta:
    """Register a free proxy; ``host`` defaults to the IP of its address.

    Adding a proxy that is known as failed marks it healthy again (undermoon clears
    it too, though it still answers ALREADY_EXISTED).
    """
    address, node_pair = validate_proxy(proxy_address, nodes)
    out = meta.model_copy(deep=True)
    if address in out.all_proxies:
        if address not in out.failed_proxies and address not in out.failures:
            raise BrokerError(BrokerErrorCode.ALREADY_EXISTED, f"proxy {address} exists")
        out.failed_proxies = [p for p in out.failed_proxies if p != address]
        out.failures.pop(address, None)
        bump(out)
        return out
    taken = {n for p in out.all_proxies.values() for n in p.node_addresses} & set(node_pair)
    if taken:
        raise BrokerError(
            BrokerErrorCode.ALREADY_EXISTED, f"nodes {sorted(taken)} belong to another proxy"
        )
    out.all_proxies[address] = ProxyResource(
        proxy_address=address, node_addresses=node_pair, host=host or host_of(address)
    )
    bump(out)
    return out


def remove_proxy(meta: BrokerMeta, proxy_address: str) -> BrokerMeta:
    proxy = meta.all_proxies.get(proxy_address)
    if proxy is None:
        raise BrokerError(BrokerErrorCode.PROXY_NOT_FOUND, f"no proxy {proxy_address}")
    if proxy.cluster is not None:
        raise BrokerError(
            BrokerErrorCode.IN_USE, f"proxy {proxy_address} serves cluster {proxy.cluster}"
        )
    out = meta.model_copy(deep=True)
    del out.all_proxies[proxy_address]
    out.failed_proxies = [p for p in out.failed_proxies if p != proxy_address]
    out.failures.pop(proxy_address, None)
    bump(out)
    return out


def _occupy(meta: BrokerMeta, cluster: Cluster) -> None:
    for address in proxy_addresses(cluster):
        meta.all_proxies[address].cluster = cluster.name


def create_cluster(
    meta: BrokerMeta, name: str, node_number: int, config: ClusterConfig | None = None
) -> BrokerMeta:
    """Allocate ``node_number / 4`` chunks; each master gets one contiguous even share."""
    validate_cluster_name(name)
    if name in meta.clusters:
        raise BrokerError(BrokerErrorCode.ALREADY_EXISTED, f"cluster {name} exists")
    validate_node_number(node_number)
    chunks = allocate_chunks(meta, node_number // CHUNK_NODES)
    shares = even_split(2 * len(chunks))
    nodes = []
    start = 0
    for i, (first, second) in enumerate(chunks):
        parts: list[ranges.RangeList] = []
        for size in shares[2 * i : 2 * i + 2]:
            parts.append([(start, start + size - 1)])
            start += size
        nodes += new_chunk_nodes(name, first, second, (parts[0], parts[1]))
    out = meta.model_copy(deep=True)
    cluster = Cluster(name=name, epoch=0, nodes=nodes, config=config or ClusterConfig())
    out.clusters[name] = cluster
    _occupy(out, cluster)
    bump(out, name)
    return out


def delete_cluster(meta: BrokerMeta, name: str) -> BrokerMeta:
    cluster = get_cluster(meta, name)
    out = meta.model_copy(deep=True)
    for address in proxy_addresses(cluster):
        out.all_proxies[address].cluster = None
    del out.clusters[name]
    bump(out)
    return out


def check_scaling_allowed(cluster: Cluster, node_number_changing: bool = False) -> None:
    """Refuse a second scaling request while one is under way.

    ``node_number_changing`` is the caller's knowledge that an operation changing
    the node number runs (undermoon's scale lock); a recorded move is a migration.
    """
    if node_number_changing:
        raise BrokerError(
            BrokerErrorCode.NODE_NUMBER_CHANGING, f"cluster {cluster.name} is changing size"
        )
    if is_migrating(cluster):
        raise BrokerError(
            BrokerErrorCode.MIGRATION_RUNNING, f"cluster {cluster.name} is migrating slots"
        )


def add_nodes(meta: BrokerMeta, name: str, node_number: int) -> BrokerMeta:
    """Append ``node_number / 4`` chunks; their masters hold no slot until an expand."""
    cluster = get_cluster(meta, name)
    check_scaling_allowed(cluster)
    validate_node_number(node_number)
    chunks = allocate_chunks(meta, node_number // CHUNK_NODES)
    out = meta.model_copy(deep=True)
    target = out.clusters[name]
    for first, second in chunks:
        target.nodes += new_chunk_nodes(name, first, second)
    _occupy(out, target)
    bump(out, name)
    return out


def add_nodes_if_needed(meta: BrokerMeta, name: str, cluster_node_number: int) -> BrokerMeta:
    """Grow the cluster to ``cluster_node_number`` nodes; idempotent."""
    cluster = get_cluster(meta, name)
    validate_node_number(cluster_node_number)
    if cluster_node_number <= len(cluster.nodes):
        raise BrokerError(
            BrokerErrorCode.NODE_NUM_ALREADY_ENOUGH,
            f"cluster {name} has {len(cluster.nodes)} nodes already",
        )
    return add_nodes(meta, name, cluster_node_number - len(cluster.nodes))


def free_chunk_indexes(cluster: Cluster) -> list[int]:
    free = set(free_master_indexes(cluster))
    return [
        c
        for c in range(chunk_count(cluster))
        if {master_index(cluster, c, 0), master_index(cluster, c, 1)} <= free
    ]


def delete_free_nodes(meta: BrokerMeta, name: str) -> BrokerMeta:
    """Drop the chunks whose two masters hold no slot, and free their proxies."""
    cluster = get_cluster(meta, name)
    check_scaling_allowed(cluster)
    gone = free_chunk_indexes(cluster)
    if not gone:
        raise BrokerError(BrokerErrorCode.FREE_NODE_NOT_FOUND, f"cluster {name} has no free node")
    out = meta.model_copy(deep=True)
    target = out.clusters[name]
    for c in gone:
        for address in chunk_proxies(target, c):
            out.all_proxies[address].cluster = None
    target.nodes = [n for i, n in enumerate(target.nodes) if i // CHUNK_NODES not in set(gone)]
    bump(out, name)
    return out


def _config_error(key: str, value: object, message: str) -> BrokerError:
    return BrokerError(BrokerErrorCode.INVALID_CONFIG, message, key=key, value=str(value))


def change_config(meta: BrokerMeta, name: str, changes: Mapping[str, object]) -> BrokerMeta:
    """``PATCH .../clusters/config``: ``compression_strategy`` and ``migration_limit``."""
    cluster = get_cluster(meta, name)
    fields = cluster.config.model_dump()
    for key, value in changes.items():
        field = key.lower()
        if field == "compression_strategy":
            choice = value.lower() if isinstance(value, str) else value
            if choice not in {s.value for s in CompressionStrategy}:
                allowed = ", ".join(s.value for s in CompressionStrategy)
                raise _config_error(key, value, f"compression_strategy is one of {allowed}")
            fields[field] = choice
        elif field == "migration_limit":
            number = _positive_int(value)
            if number is None:
                raise _config_error(key, value, "migration_limit is a positive integer")
            fields[field] = number
        else:
            raise _config_error(key, value, f"unknown config field {key!r}")
    out = meta.model_copy(deep=True)
    out.clusters[name].config = ClusterConfig(**fields)
    bump(out, name)
    return out


def _positive_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 1 else None
    if isinstance(value, str) and value.isascii() and value.isdigit() and int(value) >= 1:
        return int(value)
    return None
