"""The chunk layout of a cluster's nodes, and the views read from it.

Chunk ``c`` is ``nodes[4c:4c+4]``. Part 0 of a chunk is the master at node 0 (or,
after a failover, at its peer node 3); part 1 is the master at node 2 (or node 1).
Masters are ordered by (chunk, part): that order gives the initial slot split, the
expand and shrink targets, and which moves run first under the migration limit.
"""

from __future__ import annotations

from collections.abc import Callable

from scaleflow.core.broker import ranges
from scaleflow.core.broker.errors import BrokerError, BrokerErrorCode
from scaleflow.core.broker.models import (
    CHUNK_NODES,
    BrokerMeta,
    Cluster,
    ClusterInfo,
    MigrationTask,
    Node,
    ProxyResource,
    ReplMeta,
    ReplPeer,
    Role,
    SlotRange,
)
from scaleflow.core.broker.ranges import RangeList
from scaleflow.core.broker.validation import validate_cluster_name
from scaleflow.core.slots import SLOTS


def get_cluster(meta: BrokerMeta, name: str) -> Cluster:
    validate_cluster_name(name)
    cluster = meta.clusters.get(name)
    if cluster is None:
        raise BrokerError(BrokerErrorCode.CLUSTER_NOT_FOUND, f"no cluster named {name!r}")
    return cluster


def chunk_count(cluster: Cluster) -> int:
    return len(cluster.nodes) // CHUNK_NODES


def chunk_proxies(cluster: Cluster, chunk: int) -> tuple[str, str]:
    base = chunk * CHUNK_NODES
    return cluster.nodes[base].proxy_address, cluster.nodes[base + 2].proxy_address


def proxy_addresses(cluster: Cluster) -> list[str]:
    return [p for c in range(chunk_count(cluster)) for p in chunk_proxies(cluster, c)]


def peer_index(index: int) -> int:
    """Node i of a chunk replicates with node 3 - i."""
    base = index - index % CHUNK_NODES
    return base + 3 - index % CHUNK_NODES


def home_index(chunk: int, part: int) -> int:
    return chunk * CHUNK_NODES + 2 * part


def master_index(cluster: Cluster, chunk: int, part: int) -> int:
    home = home_index(chunk, part)
    return home if cluster.nodes[home].repl.role is Role.MASTER else peer_index(home)


def master_indexes(cluster: Cluster) -> list[int]:
    """Node indexes of the masters, in (chunk, part) order."""
    return [master_index(cluster, c, p) for c in range(chunk_count(cluster)) for p in (0, 1)]


def stable_ranges(node: Node) -> RangeList:
    return ranges.normalize(r for s in node.slots if s.is_stable for r in s.range_list)


def set_stable(node: Node, stable: RangeList) -> None:
    """One stable entry first (none when empty), then the node's moves in their order."""
    moving = [s for s in node.slots if not s.is_stable]
    head = [SlotRange(range_list=ranges.normalize(stable))] if stable else []
    node.slots = head + moving


def is_migrating(cluster: Cluster) -> bool:
    return any(not s.is_stable for n in cluster.nodes for s in n.slots)


def free_master_indexes(cluster: Cluster) -> list[int]:
    """Masters holding no slot at all, stable or moving."""
    return [i for i in master_indexes(cluster) if not cluster.nodes[i].slots]


def new_chunk_nodes(
    cluster_name: str,
    first: ProxyResource,
    second: ProxyResource,
    slots: tuple[RangeList, RangeList] | None = None,
) -> list[Node]:
    """Node 0 (first proxy) and node 2 (second proxy) are masters; 3 and 1 replicate them."""
    addresses = [*first.node_addresses, *second.node_addresses]
    proxies = [first.proxy_address] * 2 + [second.proxy_address] * 2
    nodes = []
    for i in range(CHUNK_NODES):
        peer = 3 - i
        master = i % 2 == 0
        own: list[SlotRange] = []
        if master and slots is not None and slots[i // 2]:
            own = [SlotRange(range_list=slots[i // 2])]
        nodes.append(
            Node(
                address=addresses[i],
                proxy_address=proxies[i],
                cluster_name=cluster_name,
                slots=own,
                repl=ReplMeta(
                    role=Role.MASTER if master else Role.REPLICA,
                    peers=[ReplPeer(node_address=addresses[peer], proxy_address=proxies[peer])],
                ),
            )
        )
    return nodes


def even_split(masters: int) -> list[int]:
    """Slots per master: the first ``SLOTS % masters`` masters get one extra."""
    base, extra = divmod(SLOTS, masters)
    return [base + (1 if i < extra else 0) for i in range(masters)]


def running_entries(cluster: Cluster) -> set[tuple[int, int]]:
    """(node index, slot entry index) of the moves allowed to run now.

    As undermoon: walk the masters in order and let a move run while fewer than
    ``migration_limit`` run and its source runs no other. The order never changes
    during a migration, so a running move keeps running until it is committed.
    """
    limit = cluster.config.migration_limit
    running: set[tuple[int, int]] = set()
    for i in master_indexes(cluster):
        if len(running) >= limit:
            break
        for j, entry in enumerate(cluster.nodes[i].slots):
            if entry.is_migrating:
                running.add((i, j))
                break
    return running


def running_migrations(cluster: Cluster) -> list[MigrationTask]:
    """The moves to carry out now, each as the task that commits it."""
    return [
        MigrationTask(
            cluster_name=cluster.name,
            slot_range=cluster.nodes[i].slots[j].model_copy(deep=True),
        )
        for i, j in sorted(running_entries(cluster), key=_master_order(cluster))
    ]


def _master_order(cluster: Cluster) -> Callable[[tuple[int, int]], tuple[int, int]]:
    order = {idx: pos for pos, idx in enumerate(master_indexes(cluster))}
    return lambda ij: (order[ij[0]], ij[1])


def cluster_view(cluster: Cluster) -> Cluster:
    """The cluster as proxies and clients should see it now.

    Moves held back by the migration limit show as stable slots of their source and
    are left off their destination, as undermoon's query API does.
    """
    view = cluster.model_copy(deep=True)
    running = running_entries(cluster)
    deferred = []
    for i, node in enumerate(cluster.nodes):
        for j, entry in enumerate(node.slots):
            if entry.is_migrating and (i, j) not in running:
                deferred.append((i, entry))
    for i, entry in deferred:
        src = view.nodes[i]
        src.slots = [s for s in src.slots if s != entry]
        set_stable(src, stable_ranges(src) + entry.range_list)
        meta = entry.meta
        for dst in view.nodes:
            dst.slots = [
                s
                for s in dst.slots
                if not (s.is_importing and s.meta == meta and s.range_list == entry.range_list)
            ]
    return view


def cluster_info(cluster: Cluster) -> ClusterInfo:
    view = cluster_view(cluster)
    with_slots = sum(1 for i in master_indexes(view) if stable_ranges(view.nodes[i]))
    return ClusterInfo(
        name=cluster.name,
        node_number=len(cluster.nodes),
        # Each master with slots counts with its replica, as in undermoon.
        node_number_with_slots=with_slots * 2,
        is_migrating=is_migrating(view),
    )


def slot_owners(cluster: Cluster) -> list[list[str]]:
    """For each slot, the master nodes that own it: stable or migrating out.

    A healthy cluster has exactly one owner per slot; importing does not own.
    """
    owners: list[list[str]] = [[] for _ in range(SLOTS)]
    for node in cluster.nodes:
        for entry in node.slots:
            if entry.is_importing:
                continue
            for slot in ranges.slots(entry.range_list):
                owners[slot].append(node.address)
    return owners
