"""Slot migration plans: expand, shrink, auto scale, and the commit of one move.

A plan records every move at once, as undermoon does: the source keeps the range
tagged Migrating and the destination holds it tagged Importing, both with the same
``MigrationMeta``. ``chunks.running_migrations`` says which moves run now under the
migration limit; ``commit_migration`` hands one finished move to its destination.
"""

from __future__ import annotations

from scaleflow.core.broker import ranges
from scaleflow.core.broker.chunks import (
    even_split,
    free_master_indexes,
    get_cluster,
    master_indexes,
    set_stable,
    stable_ranges,
)
from scaleflow.core.broker.clusters import (
    add_nodes,
    check_scaling_allowed,
    delete_free_nodes,
    free_chunk_indexes,
)
from scaleflow.core.broker.epochs import bump
from scaleflow.core.broker.errors import BrokerError, BrokerErrorCode
from scaleflow.core.broker.models import (
    CHUNK_NODES,
    BrokerMeta,
    Cluster,
    ImportingTag,
    MigratingTag,
    MigrationMeta,
    MigrationTask,
    ScaleOp,
    SlotRange,
)
from scaleflow.core.broker.ranges import RangeList
from scaleflow.core.broker.validation import validate_node_number


def _record_move(cluster: Cluster, src: int, dst: int, moved: RangeList, epoch: int) -> None:
    source, target = cluster.nodes[src], cluster.nodes[dst]
    meta = MigrationMeta(
        epoch=epoch,
        src_proxy_address=source.proxy_address,
        src_node_address=source.address,
        dst_proxy_address=target.proxy_address,
        dst_node_address=target.address,
    )
    moved = ranges.normalize(moved)
    source.slots.append(SlotRange(range_list=moved, tag=MigratingTag(Migrating=meta)))
    target.slots.append(SlotRange(range_list=moved, tag=ImportingTag(Importing=meta.model_copy())))


def expand(meta: BrokerMeta, name: str) -> BrokerMeta:
    """Spread the slots evenly over every master, free ones included.

    Targets are even shares in master order (the first ``16384 % masters`` get one
    more). A master above its share gives the slots at the *end* of what it holds to
    the masters below theirs, in order; new masters start empty, and a source keeps
    the start of its ranges.
    """
    cluster = get_cluster(meta, name)
    check_scaling_allowed(cluster)
    if not free_master_indexes(cluster):
        raise BrokerError(BrokerErrorCode.FREE_NODE_NOT_FOUND, f"cluster {name} has no free node")
    out = meta.model_copy(deep=True)
    epoch = bump(out, name)
    target = out.clusters[name]
    masters = master_indexes(target)
    shares = even_split(len(masters))
    have = [ranges.count(stable_ranges(target.nodes[m])) for m in masters]
    rows = list(zip(masters, shares, have, strict=True))
    takers = [(m, want - got) for m, want, got in rows if got < want]
    t = 0
    for m, want, got in rows:
        excess = got - want
        while excess > 0 and t < len(takers):
            taker, need = takers[t]
            take = min(excess, need)
            rest, moved = ranges.take_from_end(stable_ranges(target.nodes[m]), take)
            set_stable(target.nodes[m], rest)
            _record_move(target, m, taker, moved, epoch)
            excess -= take
            takers[t] = (taker, need - take)
            if need == take:
                t += 1
    return out


def shrink(meta: BrokerMeta, name: str, node_number: int) -> BrokerMeta:
    """Keep the first ``node_number / 4`` chunks; move every slot of the rest to them.

    The nodes stay in the cluster (free) until ``delete_free_nodes``.
    """
    cluster = get_cluster(meta, name)
    check_scaling_allowed(cluster)
    if free_master_indexes(cluster):
        raise BrokerError(
            BrokerErrorCode.FREE_NODE_FOUND,
            f"cluster {name} has free nodes: delete them before shrinking",
        )
    validate_node_number(node_number)
    if node_number >= len(cluster.nodes):
        raise BrokerError(
            BrokerErrorCode.INVALID_NODE_NUMBER,
            f"shrinking needs fewer than the {len(cluster.nodes)} nodes of cluster {name}",
        )
    out = meta.model_copy(deep=True)
    epoch = bump(out, name)
    target = out.clusters[name]
    masters = master_indexes(target)
    kept = masters[: 2 * (node_number // CHUNK_NODES)]
    gone = masters[len(kept) :]
    shares = even_split(len(kept))
    takers = [
        (m, want - ranges.count(stable_ranges(target.nodes[m])))
        for m, want in zip(kept, shares, strict=True)
    ]
    takers = [(m, need) for m, need in takers if need > 0]
    t = 0
    for m in gone:
        # Sources give from the start of their ranges, as undermoon does.
        left = stable_ranges(target.nodes[m])
        while left and t < len(takers):
            taker, need = takers[t]
            left, moved = ranges.take_from_start(left, need)
            got = ranges.count(moved)
            _record_move(target, m, taker, moved, epoch)
            takers[t] = (taker, need - got)
            if need == got:
                t += 1
        set_stable(target.nodes[m], left)
    return out


def _find(
    cluster: Cluster, address: str, migrating: bool, entry: SlotRange
) -> tuple[int, int] | None:
    """(node index, slot entry index) of the move's entry on one side."""
    for i, node in enumerate(cluster.nodes):
        if node.address != address:
            continue
        for j, s in enumerate(node.slots):
            if (
                (s.is_migrating if migrating else s.is_importing)
                and s.meta == entry.meta
                and s.range_list == entry.range_list
            ):
                return i, j
    return None


def commit_migration(meta: BrokerMeta, task: MigrationTask) -> BrokerMeta:
    """A move is done: its slots become stable on the destination."""
    cluster = get_cluster(meta, task.cluster_name)
    move = task.slot_range.meta
    if move is None:
        raise BrokerError(
            BrokerErrorCode.INVALID_MIGRATION_TASK, "the slot range has no migration tag"
        )
    entry = SlotRange(
        range_list=ranges.normalize(task.slot_range.range_list),
        tag=MigratingTag(Migrating=move),
    )
    src = _find(cluster, move.src_node_address, True, entry)
    dst = _find(cluster, move.dst_node_address, False, entry)
    if src is None or dst is None:
        raise BrokerError(
            BrokerErrorCode.MIGRATION_TASK_NOT_FOUND,
            f"no move of {ranges.label(entry.range_list)} at epoch {move.epoch} "
            f"from {move.src_node_address} to {move.dst_node_address}",
        )
    out = meta.model_copy(deep=True)
    target = out.clusters[task.cluster_name]
    (si, sj), (di, dj) = src, dst
    del target.nodes[si].slots[sj]
    del target.nodes[di].slots[dj]
    set_stable(target.nodes[di], stable_ranges(target.nodes[di]) + entry.range_list)
    bump(out, task.cluster_name)
    return out


def auto_scale(meta: BrokerMeta, name: str, node_number: int) -> tuple[BrokerMeta, ScaleOp]:
    """``POST .../migrations/auto``: drop free nodes, then add nodes or plan a shrink.

    Scaling out only adds the nodes: the caller brings them up, then calls ``expand``.
    """
    cluster = get_cluster(meta, name)
    check_scaling_allowed(cluster)
    validate_node_number(node_number)
    out = meta
    # Dropping free nodes first makes a retried request start from a clean state.
    if free_chunk_indexes(cluster):
        out = delete_free_nodes(out, name)
    existing = len(out.clusters[name].nodes)
    if node_number == existing:
        return out, ScaleOp.NOOP
    if node_number > existing:
        return add_nodes(out, name, node_number - existing), ScaleOp.SCALE_OUT
    return shrink(out, name, node_number), ScaleOp.SCALE_DOWN
