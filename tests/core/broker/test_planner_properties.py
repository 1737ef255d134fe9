"""Property tests of the broker planner over 2-6 hosts x 1-6 proxies per host.

Every create, add and remove size is tried on each drawn layout. Throughout: every
slot is owned exactly once, every chunk spans two hosts, the migration limit holds,
and epochs only rise.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scaleflow.core.broker import clusters, failover, migration
from scaleflow.core.broker.allocation import pair_hosts
from scaleflow.core.broker.chunks import (
    chunk_proxies,
    home_index,
    master_indexes,
    running_migrations,
    stable_ranges,
)
from scaleflow.core.broker.errors import BrokerError, BrokerErrorCode
from scaleflow.core.broker.models import BrokerMeta, ClusterConfig
from scaleflow.core.broker.ranges import count
from tests.core.broker.helpers import (
    can_pair,
    check_epochs,
    check_meta,
    commit,
    free_counts,
    is_balanced,
    make_meta,
    run_migrations,
)

LAYOUTS = st.lists(st.integers(min_value=1, max_value=6), min_size=2, max_size=6)
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _create(meta: BrokerMeta, nodes: int, limit: int = 2) -> BrokerMeta:
    after = clusters.create_cluster(meta, "c", nodes, ClusterConfig(migration_limit=limit))
    check_epochs(meta, after)
    check_meta(after)
    return after


def _largest(meta: BrokerMeta) -> int:
    """The largest node number the free proxies can hold."""
    k = 0
    while can_pair(free_counts(meta), k + 1):
        k += 1
    return 4 * k


@SETTINGS
@given(layout=LAYOUTS)
def test_create_every_size(layout: list[int]) -> None:
    meta = make_meta(layout)
    total = sum(layout)
    for nodes in range(4, 2 * total + 8, 4):
        k = nodes // 4
        if 2 * k > total:
            expected = BrokerErrorCode.NO_AVAILABLE_RESOURCE
        elif not can_pair(layout, k):
            expected = BrokerErrorCode.RESOURCE_NOT_BALANCE
        else:
            after = _create(meta, nodes)
            cluster = after.clusters["c"]
            assert len(cluster.nodes) == nodes
            # Even shares, one contiguous range each, in master order.
            start = 0
            for m in master_indexes(cluster):
                (r,) = stable_ranges(cluster.nodes[m])
                assert r[0] == start
                start = r[1] + 1
            assert is_balanced(cluster)
            assert master_indexes(cluster) == [home_index(c, p) for c in range(k) for p in (0, 1)]
            continue
        with pytest.raises(BrokerError) as err:
            clusters.create_cluster(meta, "c", nodes)
        assert err.value.code is expected


@SETTINGS
@given(layout=LAYOUTS, data=st.data())
def test_expand_every_add_size(layout: list[int], data: st.DataObject) -> None:
    meta = make_meta(layout)
    largest = _largest(meta)
    first = data.draw(st.sampled_from(range(4, largest + 1, 4)), label="initial nodes")
    limit = data.draw(st.integers(min_value=1, max_value=4), label="migration_limit")
    pick = data.draw(st.integers(min_value=0, max_value=3), label="commit order")
    start = _create(meta, first, limit)
    before = start.clusters["c"]
    for add in range(4, largest - first + 1, 4):
        grown = clusters.add_nodes(start, "c", add)
        check_epochs(start, grown)
        check_meta(grown)
        cluster = grown.clusters["c"]
        new_masters = master_indexes(cluster)[len(master_indexes(before)) :]
        assert all(not cluster.nodes[m].slots for m in new_masters), "new masters start empty"
        planned = migration.expand(grown, "c")
        check_epochs(grown, planned)
        check_meta(planned)
        done = run_migrations(planned, "c", pick)
        cluster = done.clusters["c"]
        assert is_balanced(cluster)
        assert all(stable_ranges(cluster.nodes[m]) for m in master_indexes(cluster))
        # Sources kept the head of what they held: ranges went from their ends.
        for m in master_indexes(before):
            kept = stable_ranges(cluster.nodes[m])
            held = stable_ranges(before.nodes[m])
            assert kept and kept[0][0] == held[0][0]
            assert kept[-1][1] == held[0][0] + count(kept) - 1
    with pytest.raises(BrokerError) as err:
        clusters.add_nodes(start, "c", largest - first + 4)
    assert err.value.code in {
        BrokerErrorCode.NO_AVAILABLE_RESOURCE,
        BrokerErrorCode.RESOURCE_NOT_BALANCE,
    }


@SETTINGS
@given(layout=LAYOUTS, data=st.data())
def test_shrink_every_remove_size(layout: list[int], data: st.DataObject) -> None:
    meta = make_meta(layout)
    largest = _largest(meta)
    first = data.draw(st.sampled_from(range(4, largest + 1, 4)), label="initial nodes")
    limit = data.draw(st.integers(min_value=1, max_value=4), label="migration_limit")
    pick = data.draw(st.integers(min_value=0, max_value=3), label="commit order")
    start = _create(meta, first, limit)
    for keep in range(4, first, 4):
        planned = migration.shrink(start, "c", keep)
        check_epochs(start, planned)
        check_meta(planned)
        done = run_migrations(planned, "c", pick)
        cluster = done.clusters["c"]
        kept = master_indexes(cluster)[: keep // 2]
        assert is_balanced(cluster, kept)
        assert all(stable_ranges(cluster.nodes[m]) for m in kept)
        gone = master_indexes(cluster)[keep // 2 :]
        assert all(not cluster.nodes[m].slots for m in gone)
        freed = clusters.delete_free_nodes(done, "c")
        check_epochs(done, freed)
        check_meta(freed)
        assert len(freed.clusters["c"].nodes) == keep
        assert freed.clusters["c"].nodes == cluster.nodes[:keep], "the first chunks stay"
        assert sum(free_counts(freed)) == sum(layout) - keep // 2


@SETTINGS
@given(layout=LAYOUTS, data=st.data())
def test_failover_during_migration_keeps_every_slot_owned(
    layout: list[int], data: st.DataObject
) -> None:
    meta = make_meta(layout)
    largest = _largest(meta)
    if largest < 8:
        return  # no migration is possible on one chunk
    first = data.draw(st.sampled_from(range(4, largest + 1, 4)), label="initial nodes")
    limit = data.draw(st.integers(min_value=1, max_value=4), label="migration_limit")
    start = _create(meta, first, limit)
    if first < largest and data.draw(st.booleans(), label="expand"):
        grown = clusters.add_nodes(
            start,
            "c",
            data.draw(st.sampled_from(range(4, largest - first + 1, 4)), label="added nodes"),
        )
        planned = migration.expand(grown, "c")
    elif first > 4:
        planned = migration.shrink(
            start, "c", data.draw(st.sampled_from(range(4, first, 4)), label="kept nodes")
        )
    else:
        return
    check_meta(planned)
    for _ in range(data.draw(st.integers(min_value=0, max_value=6), label="commits first")):
        tasks = running_migrations(planned.clusters["c"])
        if not tasks:
            break
        planned = commit(planned, tasks[0])
    cluster = planned.clusters["c"]
    proxies = [p for c in range(len(cluster.nodes) // 4) for p in chunk_proxies(cluster, c)]
    failed = data.draw(st.sampled_from(proxies), label="failed proxy")
    result = failover.failover(planned, failed)
    after = result.meta
    check_epochs(planned, after)
    check_meta(after)
    cluster = after.clusters["c"]
    assert failed in after.failed_proxies
    for m in master_indexes(cluster):
        assert cluster.nodes[m].proxy_address != failed, "a master stayed on the failed proxy"
    if result.replaced_by is not None:
        assert after.all_proxies[failed].cluster is None
        assert after.all_proxies[result.replaced_by].cluster == "c"
    else:
        assert after.all_proxies[failed].cluster == "c"
    # Moves touching the failed proxy restart under a new epoch; old tasks are gone.
    done = run_migrations(after, "c")
    check_meta(done)
    balanced = failover.balance_masters(done, "c")
    check_epochs(done, balanced)
    check_meta(balanced)
    if result.replaced_by is not None:
        assert master_indexes(balanced.clusters["c"]) == [
            home_index(c, p) for c in range(len(cluster.nodes) // 4) for p in (0, 1)
        ]


@settings(max_examples=300, deadline=None)
@given(
    counts=st.lists(st.integers(min_value=0, max_value=6), min_size=1, max_size=6),
    links=st.lists(st.integers(min_value=0, max_value=5), min_size=36, max_size=36),
    k=st.integers(min_value=1, max_value=20),
)
def test_pairing_succeeds_exactly_when_possible(
    counts: list[int], links: list[int], k: int
) -> None:
    hosts = [f"h{i}" for i in range(len(counts))]
    free = {h: [f"{h}:{p}" for p in range(c)] for h, c in zip(hosts, counts, strict=True)}
    table = {
        a: {b: links[6 * i + j] + links[6 * j + i] for j, b in enumerate(hosts) if b != a}
        for i, a in enumerate(hosts)
    }
    if not can_pair(counts, k):
        with pytest.raises(BrokerError):
            pair_hosts(free, table, k)
        return
    pairs = pair_hosts(free, table, k)
    assert len(pairs) == k
    used = [p for pair in pairs for p in pair]
    assert len(set(used)) == len(used)
    assert all(a.split(":")[0] != b.split(":")[0] for a, b in pairs)
