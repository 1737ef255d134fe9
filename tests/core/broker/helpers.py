"""Builders and invariant checks shared by the broker planner tests."""

from __future__ import annotations

from scaleflow.core.broker import chunks, clusters, migration
from scaleflow.core.broker.chunks import (
    chunk_count,
    chunk_proxies,
    cluster_view,
    master_indexes,
    running_migrations,
    stable_ranges,
)
from scaleflow.core.broker.models import BrokerMeta, Cluster, MigrationTask, Role
from scaleflow.core.slots import SLOTS


def host(h: int) -> str:
    return f"10.0.0.{h + 1}"


def make_meta(per_host: list[int]) -> BrokerMeta:
    """Free proxies: ``per_host[h]`` of them on host h, each with two nodes."""
    meta = BrokerMeta()
    for h, count in enumerate(per_host):
        for p in range(count):
            ip = host(h)
            meta = clusters.add_proxy(
                meta, f"{ip}:{7000 + p}", [f"{ip}:{6000 + 2 * p}", f"{ip}:{6001 + 2 * p}"]
            )
    return meta


def can_pair(counts: list[int], chunks_needed: int) -> bool:
    """k pairs of proxies on distinct hosts exist iff sum(min(c, k)) >= 2k."""
    return sum(min(c, chunks_needed) for c in counts) >= 2 * chunks_needed


def free_counts(meta: BrokerMeta) -> list[int]:
    failed = set(meta.failed_proxies)
    out: dict[str, int] = {}
    for addr, p in meta.all_proxies.items():
        if p.cluster is None and addr not in failed and addr not in meta.failures:
            out[p.host] = out.get(p.host, 0) + 1
    return list(out.values())


def assert_tiles(ranges_: list[tuple[int, int]]) -> None:
    """The ranges cover 0..16383 exactly once."""
    expect = 0
    for start, end in sorted(ranges_):
        assert start == expect, f"slot {expect} is unowned or owned twice (next range {start})"
        assert start <= end
        expect = end + 1
    assert expect == SLOTS, f"slots from {expect} are unowned"


def owned_ranges(cluster: Cluster) -> list[tuple[int, int]]:
    """Stable and migrating-out ranges: a slot's owner until its move commits."""
    return [r for n in cluster.nodes for s in n.slots if not s.is_importing for r in s.range_list]


def check_cluster(meta: BrokerMeta, cluster: Cluster) -> None:
    assert len(cluster.nodes) % 4 == 0 and cluster.nodes
    assert_tiles(owned_ranges(cluster))
    masters = set(master_indexes(cluster))
    for i, node in enumerate(cluster.nodes):
        assert node.cluster_name == cluster.name
        # Slots only ever sit on masters, and each part has exactly one master.
        assert (node.repl.role is Role.MASTER) == (i in masters)
        if node.slots:
            assert i in masters
        peer = chunks.peer_index(i)
        assert [p.node_address for p in node.repl.peers] == [cluster.nodes[peer].address]
    for c in range(chunk_count(cluster)):
        a, b = chunk_proxies(cluster, c)
        assert meta.all_proxies[a].host != meta.all_proxies[b].host, "chunk on one host"
        base = 4 * c
        assert cluster.nodes[base + 1].proxy_address == a
        assert cluster.nodes[base + 3].proxy_address == b
        assert meta.all_proxies[a].node_addresses == (
            cluster.nodes[base].address,
            cluster.nodes[base + 1].address,
        )
        assert meta.all_proxies[b].node_addresses == (
            cluster.nodes[base + 2].address,
            cluster.nodes[base + 3].address,
        )
    # Each move is recorded on both sides, with one meta.
    assert moves(cluster, importing=False) == moves(cluster, importing=True)
    for n in cluster.nodes:
        for s in n.slots:
            if s.is_migrating:
                assert s.meta is not None and s.meta.src_node_address == n.address
            if s.is_importing:
                assert s.meta is not None and s.meta.dst_node_address == n.address
    check_view(cluster)


def moves(cluster: Cluster, importing: bool) -> set[tuple[str, str]]:
    return {
        (s.model_dump_json(include={"range_list"}), str(s.meta))
        for n in cluster.nodes
        for s in n.slots
        if (s.is_importing if importing else s.is_migrating)
    }


def check_view(cluster: Cluster) -> None:
    """The migration limit: at most ``limit`` moves, one per source, and a full view."""
    tasks = running_migrations(cluster)
    assert len(tasks) <= cluster.config.migration_limit
    sources = [str(t.slot_range.meta and t.slot_range.meta.src_node_address) for t in tasks]
    assert len(sources) == len(set(sources))
    view = cluster_view(cluster)
    assert_tiles(owned_ranges(view))
    shown = [s for n in view.nodes for s in n.slots if s.is_migrating]
    assert len(shown) == len(tasks)


def check_meta(meta: BrokerMeta) -> None:
    seen: dict[str, str] = {}
    for name, cluster in meta.clusters.items():
        assert cluster.name == name
        check_cluster(meta, cluster)
        for addr in chunks.proxy_addresses(cluster):
            assert addr not in seen, f"proxy {addr} in {seen.get(addr)} and {name}"
            seen[addr] = name
    for addr, p in meta.all_proxies.items():
        assert p.cluster == seen.get(addr), f"proxy {addr} says {p.cluster}"


def check_epochs(before: BrokerMeta, after: BrokerMeta) -> None:
    """A change raises the global epoch; no cluster epoch ever goes down."""
    assert after.global_epoch > before.global_epoch
    for name, cluster in after.clusters.items():
        assert cluster.epoch <= after.global_epoch
        if name in before.clusters:
            assert cluster.epoch >= before.clusters[name].epoch


def is_balanced(cluster: Cluster, masters: list[int] | None = None) -> bool:
    counts = [
        sum(e - s + 1 for s, e in stable_ranges(cluster.nodes[m]))
        for m in (masters if masters is not None else master_indexes(cluster))
    ]
    return max(counts) - min(counts) <= 1


def commit(meta: BrokerMeta, task: MigrationTask) -> BrokerMeta:
    after = migration.commit_migration(meta, task)
    check_epochs(meta, after)
    check_meta(after)
    return after


def run_migrations(meta: BrokerMeta, name: str, pick: int = 0) -> BrokerMeta:
    """Commit running moves until none is left, checking the limit at every step.

    A move that runs must keep running until it is committed.
    """
    running: set[str] = set()
    steps = 0
    while tasks := running_migrations(meta.clusters[name]):
        now = {t.model_dump_json() for t in tasks}
        assert running <= now, "a running move was held back"
        task = tasks[pick % len(tasks)]
        meta = commit(meta, task)
        running = now - {task.model_dump_json()}
        steps += 1
        assert steps <= 4 * SLOTS
    assert not chunks.is_migrating(meta.clusters[name])
    return meta
