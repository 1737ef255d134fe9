"""Worked examples of the broker planner: exact layouts, plans, failovers and failures."""

from __future__ import annotations

from scaleflow.core.broker import clusters, epochs, failover, failures, migration
from scaleflow.core.broker.allocation import free_proxies
from scaleflow.core.broker.chunks import (
    cluster_info,
    cluster_view,
    master_indexes,
    running_migrations,
    slot_owners,
    stable_ranges,
)
from scaleflow.core.broker.models import (
    BrokerConfig,
    BrokerMeta,
    ClusterConfig,
    CompressionStrategy,
    Role,
    ScaleOp,
)
from tests.core.broker.helpers import check_meta, make_meta, run_migrations


def _slots(meta: BrokerMeta, name: str = "c") -> list[tuple[str, list[list[tuple[int, int]]]]]:
    return [
        (str(s.tag if s.is_stable else type(s.tag).__name__), [s.range_list])
        for n in meta.clusters[name].nodes
        for s in n.slots
    ]


def test_create_lays_out_chunks() -> None:
    meta = clusters.create_cluster(make_meta([2, 2, 2, 2]), "c", 8)
    cluster = meta.clusters["c"]
    assert [n.repl.role for n in cluster.nodes] == [Role.MASTER, Role.REPLICA] * 4
    for i, node in enumerate(cluster.nodes):
        peer = cluster.nodes[(i // 4) * 4 + 3 - i % 4]
        assert node.repl.peers[0].node_address == peer.address
    assert [stable_ranges(cluster.nodes[m]) for m in master_indexes(cluster)] == [
        [(0, 4095)],
        [(4096, 8191)],
        [(8192, 12287)],
        [(12288, 16383)],
    ]
    # The first chunk takes the fullest host, then the least linked, then names decide.
    hosts = [meta.all_proxies[n.proxy_address].host for n in cluster.nodes[::2]]
    assert hosts == ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"]
    assert cluster.epoch == meta.global_epoch
    assert cluster_info(cluster).model_dump() == {
        "name": "c",
        "node_number": 8,
        "node_number_with_slots": 8,
        "is_migrating": False,
    }
    assert len(free_proxies(meta)) == 4
    # Three masters: 16384 = 5462 + 5461 + 5461, the extra slot to the first.
    six = clusters.create_cluster(make_meta([2, 2, 2]), "c", 12).clusters["c"]
    sizes = [sum(e - s + 1 for s, e in stable_ranges(six.nodes[m])) for m in master_indexes(six)]
    assert sizes == [2731] * 4 + [2730] * 2


def test_new_chunks_pair_least_linked_hosts() -> None:
    def hosts(meta: BrokerMeta, name: str) -> list[str]:
        return [meta.all_proxies[n.proxy_address].host for n in meta.clusters[name].nodes[::2]]

    meta = clusters.create_cluster(make_meta([3, 3, 3, 3]), "a", 4)
    assert hosts(meta, "a") == ["10.0.0.1", "10.0.0.2"]
    meta = clusters.create_cluster(meta, "b", 4)
    assert hosts(meta, "b") == ["10.0.0.3", "10.0.0.4"]  # the fullest hosts now
    meta = clusters.create_cluster(meta, "c", 4)
    # All hosts have 2 left; host 1 already shares a chunk with host 2, so not host 2.
    assert hosts(meta, "c") == ["10.0.0.1", "10.0.0.3"]


def test_expand_trims_the_end_of_each_source() -> None:
    meta = clusters.create_cluster(make_meta([2, 2, 2, 2]), "c", 4)
    meta = clusters.add_nodes(meta, "c", 4)
    assert cluster_info(meta.clusters["c"]).node_number_with_slots == 4
    meta = migration.expand(meta, "c")
    assert _slots(meta) == [
        ("None", [[(0, 4095)]]),
        ("MigratingTag", [[(4096, 8191)]]),
        ("None", [[(8192, 12287)]]),
        ("MigratingTag", [[(12288, 16383)]]),
        ("ImportingTag", [[(4096, 8191)]]),
        ("ImportingTag", [[(12288, 16383)]]),
    ]
    cluster = meta.clusters["c"]
    move = cluster.nodes[0].slots[1].meta
    assert move is not None
    assert move.epoch == meta.global_epoch == cluster.epoch
    assert (move.src_node_address, move.dst_node_address) == (
        cluster.nodes[0].address,
        cluster.nodes[4].address,
    )
    assert cluster_info(cluster).is_migrating
    done = run_migrations(meta, "c")
    assert [stable_ranges(done.clusters["c"].nodes[m]) for m in (0, 2, 4, 6)] == [
        [(0, 4095)],
        [(8192, 12287)],
        [(4096, 8191)],
        [(12288, 16383)],
    ]


def test_shrink_keeps_the_first_chunks() -> None:
    meta = clusters.create_cluster(make_meta([2, 2, 2, 2]), "c", 8)
    meta = migration.shrink(meta, "c", 4)
    cluster = meta.clusters["c"]
    assert not stable_ranges(cluster.nodes[4]) and not stable_ranges(cluster.nodes[6])
    done = run_migrations(meta, "c")
    cluster = done.clusters["c"]
    assert stable_ranges(cluster.nodes[0]) == [(0, 4095), (8192, 12287)]
    assert stable_ranges(cluster.nodes[2]) == [(4096, 8191), (12288, 16383)]
    assert cluster_info(cluster).model_dump()["node_number_with_slots"] == 4
    freed = clusters.delete_free_nodes(done, "c")
    assert len(freed.clusters["c"].nodes) == 4
    assert len(free_proxies(freed)) == 6


def test_migration_limit_runs_moves_in_order() -> None:
    meta = clusters.create_cluster(
        make_meta([3, 3, 3, 3]), "c", 8, ClusterConfig(migration_limit=1)
    )
    meta = migration.expand(clusters.add_nodes(meta, "c", 8), "c")
    cluster = meta.clusters["c"]
    tasks = running_migrations(cluster)
    assert len(tasks) == 1
    assert tasks[0].slot_range.meta is not None
    assert tasks[0].slot_range.meta.src_node_address == cluster.nodes[0].address
    # Held-back moves show as stable on their source and are off their destination.
    view = cluster_view(cluster)
    assert sum(1 for n in view.nodes for s in n.slots if s.is_migrating) == 1
    assert sum(1 for n in view.nodes for s in n.slots if s.is_importing) == 1
    assert all(len(o) == 1 for o in slot_owners(view))
    wider = clusters.change_config(meta, "c", {"migration_limit": "3"})
    assert len(running_migrations(wider.clusters["c"])) == 3
    run_migrations(meta, "c")


def test_failover_takes_over_then_replaces() -> None:
    meta = clusters.create_cluster(make_meta([1, 1, 1]), "c", 4)
    before = meta.clusters["c"]
    failed = before.nodes[0].proxy_address
    result = failover.failover(meta, failed)
    after = result.meta
    cluster = after.clusters["c"]
    check_meta(after)
    assert result.replaced_by == "10.0.0.3:7000"
    # Node 3 took node 0's slots; nodes 0-1 are now the spare's, as replicas.
    assert cluster.nodes[3].repl.role is Role.MASTER
    assert stable_ranges(cluster.nodes[3]) == [(0, 8191)]
    assert [n.proxy_address for n in cluster.nodes[:2]] == ["10.0.0.3:7000"] * 2
    assert [n.repl.role for n in cluster.nodes[:2]] == [Role.REPLICA] * 2
    assert cluster.nodes[2].repl.peers[0].node_address == cluster.nodes[1].address
    assert after.failed_proxies == [failed]
    assert after.all_proxies[failed].cluster is None
    assert failed not in [p.proxy_address for p in free_proxies(after)]
    # Balance moves the master home once the chunk is healthy.
    balanced = failover.balance_masters(after, "c")
    assert master_indexes(balanced.clusters["c"]) == [0, 2]
    assert stable_ranges(balanced.clusters["c"].nodes[0]) == [(0, 8191)]
    # The failed proxy comes back: re-adding it makes it free again.
    back = clusters.add_proxy(balanced, failed, list(after.all_proxies[failed].node_addresses))
    assert failed in [p.proxy_address for p in free_proxies(back)]


def test_failover_without_a_spare_keeps_the_takeover() -> None:
    meta = clusters.create_cluster(make_meta([1, 2]), "c", 4)
    failed = meta.clusters["c"].nodes[2].proxy_address  # on host 2
    # The only free proxy is on the surviving peer's host: it cannot take the place.
    result = failover.failover(meta, failed)
    assert result.replaced_by is None
    cluster = result.meta.clusters["c"]
    assert master_indexes(cluster) == [0, 1]
    assert stable_ranges(cluster.nodes[1]) == [(8192, 16383)]
    assert result.meta.all_proxies[failed].cluster == "c"
    check_meta(result.meta)
    # A new proxy on a third host arrives: the replacement goes through.
    grown = clusters.add_proxy(result.meta, "10.0.0.9:7000", ["10.0.0.9:6000", "10.0.0.9:6001"])
    replaced = failover.replace_failed_proxy(grown, failed)
    assert replaced.all_proxies["10.0.0.9:7000"].cluster == "c"
    check_meta(replaced)


def test_failover_of_a_free_proxy_only_marks_it() -> None:
    meta = make_meta([1, 1])
    meta = failures.add_failure(meta, "10.0.0.1:7000", "r", 0.0)
    result = failover.failover(meta, "10.0.0.1:7000")
    assert result.replaced_by is None
    assert result.meta.failed_proxies == ["10.0.0.1:7000"]
    assert result.meta.failures == {}


def test_failures_need_a_quorum_within_the_ttl() -> None:
    meta = clusters.create_cluster(make_meta([1, 1, 1]), "c", 4)
    proxy = meta.clusters["c"].nodes[0].proxy_address
    config = BrokerConfig(failure_quorum=2, failure_ttl=60)
    once = failures.add_failure(meta, proxy, "a", 100.0)
    assert once.global_epoch == meta.global_epoch + 1
    assert failures.add_failure(once, proxy, "a", 110.0) is once  # a repeat changes nothing
    assert failures.failed_proxies(once, 110.0, config) == []
    assert failures.failed_proxies(once, 110.0, BrokerConfig()) == [proxy]  # quorum 1
    twice = failures.add_failure(once, proxy, "b", 130.0)
    assert failures.failed_proxies(twice, 150.0, config) == [proxy]
    assert failures.failed_proxies(twice, 160.0, config) == []  # "a" is 60 s old
    pruned = failures.prune_failures(twice, 170.0, config)
    assert pruned.failures == {proxy: {"b": 130.0}}
    assert failures.prune_failures(pruned, 171.0, config) is pruned
    # Once failed over and replaced, the proxy needs nothing more.
    moved = failover.failover(twice, proxy).meta
    assert failures.failed_proxies(moved, 150.0, config) == []
    # Reports on unknown proxies are kept but never fail anything.
    ghost = failures.add_failure(meta, "10.9.9.9:1", "a", 100.0)
    assert failures.failed_proxies(ghost, 100.0, BrokerConfig()) == []


def test_hosts_cannot_fail() -> None:
    meta = make_meta([2, 2, 2, 2])
    assert failures.hosts_cannot_fail(meta) == []
    assert failures.hosts_cannot_fail(clusters.create_cluster(meta, "c", 12)) == []
    full = clusters.create_cluster(meta, "c", 16)
    assert failures.hosts_cannot_fail(full) == [f"10.0.0.{h}" for h in (1, 2, 3, 4)]


def test_auto_scale() -> None:
    meta = clusters.create_cluster(make_meta([2, 2, 2, 2]), "c", 4)
    same, op = migration.auto_scale(meta, "c", 4)
    assert op is ScaleOp.NOOP and same is meta
    grown, op = migration.auto_scale(meta, "c", 8)
    assert op is ScaleOp.SCALE_OUT
    assert not running_migrations(grown.clusters["c"])  # nodes first, moves later
    grown = run_migrations(migration.expand(grown, "c"), "c")
    down, op = migration.auto_scale(grown, "c", 4)
    assert op is ScaleOp.SCALE_DOWN
    down = run_migrations(down, "c")
    # A retried request drops the free nodes first, then has nothing left to do.
    again, op = migration.auto_scale(down, "c", 4)
    assert op is ScaleOp.NOOP
    assert len(again.clusters["c"].nodes) == 4


def test_epochs_and_restore() -> None:
    meta = clusters.create_cluster(make_meta([2, 2]), "c", 4)
    bumped = epochs.force_bump_epoch(meta, 100)
    assert bumped.global_epoch == 100 and bumped.clusters["c"].epoch == 100
    assert epochs.recover_epoch(bumped, 250).global_epoch == 251
    assert epochs.recover_epoch(bumped, 3).global_epoch == 101
    assert epochs.restore(meta, bumped) == bumped
    deleted = clusters.delete_cluster(bumped, "c")
    assert deleted.global_epoch == 101 and all(
        p.cluster is None for p in deleted.all_proxies.values()
    )


def test_config_and_proxies() -> None:
    meta = make_meta([1, 1])
    meta = clusters.add_proxy(meta, "10.0.0.7:7000", ["10.0.0.7:6000", "10.0.0.7:6001"], "rack7")
    assert meta.all_proxies["10.0.0.7:7000"].host == "rack7"
    assert meta.all_proxies["10.0.0.1:7000"].host == "10.0.0.1"
    meta = clusters.create_cluster(meta, "c", 4)
    changed = clusters.change_config(meta, "c", {"compression_strategy": "Set_Get_Only"})
    assert changed.clusters["c"].config.compression_strategy is CompressionStrategy.SET_GET_ONLY
    assert changed.clusters["c"].epoch == changed.global_epoch > meta.global_epoch
    free = [a for a, p in meta.all_proxies.items() if p.cluster is None]
    removed = clusters.remove_proxy(meta, free[0])
    assert free[0] not in removed.all_proxies


def test_metadata_json_matches_the_seed() -> None:
    assert BrokerMeta().model_dump(mode="json") == {
        "version": "mem-broker-0.1",
        "global_epoch": 0,
        "clusters": {},
        "all_proxies": {},
        "failed_proxies": [],
        "failures": {},
    }
    meta = migration.expand(
        clusters.add_nodes(clusters.create_cluster(make_meta([2, 2, 2]), "c", 4), "c", 4), "c"
    )
    raw = meta.model_dump_json()
    assert BrokerMeta.model_validate_json(raw) == meta
    node = meta.model_dump(mode="json")["clusters"]["c"]["nodes"][0]
    assert node["slots"][0] == {"range_list": [[0, 4095]], "tag": "None"}
    assert set(node["slots"][1]["tag"]["Migrating"]) == {
        "epoch",
        "src_proxy_address",
        "src_node_address",
        "dst_proxy_address",
        "dst_node_address",
    }
    assert node["repl"]["role"] == "master"
