"""One example for each error code, and the seed's status and body for each."""

from __future__ import annotations

import pytest

from scaleflow.core.broker import clusters, epochs, failover, migration
from scaleflow.core.broker.chunks import running_migrations
from scaleflow.core.broker.errors import HTTP_STATUS, BrokerError, BrokerErrorCode
from scaleflow.core.broker.models import BrokerMeta, MigrationTask
from scaleflow.core.broker.validation import validate_cluster_name, validate_node_number
from tests.core.broker.helpers import make_meta

E = BrokerErrorCode


def _code(err: pytest.ExceptionInfo[BrokerError]) -> BrokerErrorCode:
    return err.value.code


@pytest.fixture
def meta() -> BrokerMeta:
    """8 free proxies on 4 hosts, as ``make run`` registers by default."""
    return make_meta([2, 2, 2, 2])


@pytest.fixture
def four(meta: BrokerMeta) -> BrokerMeta:
    return clusters.create_cluster(meta, "c", 4)


@pytest.fixture
def expanding(four: BrokerMeta) -> BrokerMeta:
    return migration.expand(clusters.add_nodes(four, "c", 4), "c")


def test_statuses_are_the_seeds() -> None:
    seed = {
        "INVALID_CLUSTER_NAME": 400,
        "INVALID_NODE_NUMBER": 400,
        "INVALID_PROXY_ADDRESS": 400,
        "CLUSTER_NOT_FOUND": 404,
        "PROXY_NOT_FOUND": 404,
        "ALREADY_EXISTED": 409,
        "IN_USE": 409,
        "NO_AVAILABLE_RESOURCE": 409,
        "MIGRATION_RUNNING": 409,
        "NODE_NUMBER_CHANGING": 409,
        "NODE_NUM_ALREADY_ENOUGH": 409,
        "FREE_NODE_NOT_FOUND": 409,
        "FREE_NODE_FOUND": 409,
        "INVALID_CONFIG": 409,
        "INVALID_META_VERSION": 409,
        "EPOCH_SMALLER_THAN_CURRENT": 409,
        "RETRY": 409,
    }
    for code, status in seed.items():
        assert HTTP_STATUS[E(code)] == status
    # Not in the seed: undermoon's statuses.
    assert HTTP_STATUS[E.RESOURCE_NOT_BALANCE] == 409
    assert HTTP_STATUS[E.INVALID_MIGRATION_TASK] == 400
    assert HTTP_STATUS[E.MIGRATION_TASK_NOT_FOUND] == 404
    assert set(HTTP_STATUS) == set(E)


def test_bodies() -> None:
    assert BrokerError(E.RETRY).body() == {"error": "RETRY"}
    assert BrokerError(E.RETRY).status == 409
    err = BrokerError(E.INVALID_CONFIG, "bad", key="compression_strategy", value="zstd")
    assert err.body() == {
        "error": "INVALID_CONFIG",
        "key": "compression_strategy",
        "value": "zstd",
        "message": "bad",
    }


@pytest.mark.parametrize("name", ["", "x" * 31, "bad name", "a/b", "a.b", "nämé", "a\n"])
def test_invalid_cluster_name(meta: BrokerMeta, name: str) -> None:
    with pytest.raises(BrokerError) as err:
        clusters.create_cluster(meta, name, 4)
    assert _code(err) is E.INVALID_CLUSTER_NAME
    with pytest.raises(BrokerError) as err:
        clusters.delete_cluster(meta, name)
    assert _code(err) is E.INVALID_CLUSTER_NAME


def test_valid_cluster_names() -> None:
    for name in ["a", "x" * 30, "Az09@_-"]:
        assert validate_cluster_name(name) == name


@pytest.mark.parametrize("number", [0, -4, 2, 6, 13, True, 4.0, "8"])
def test_invalid_node_number(meta: BrokerMeta, number: object) -> None:
    with pytest.raises(BrokerError) as err:
        clusters.create_cluster(meta, "c", number)  # type: ignore[arg-type]
    assert _code(err) is E.INVALID_NODE_NUMBER


def test_node_numbers_are_multiples_of_four() -> None:
    assert [validate_node_number(n) for n in (4, 8, 40)] == [4, 8, 40]


def test_invalid_node_number_for_shrink(four: BrokerMeta) -> None:
    for n in (4, 8, 6):
        with pytest.raises(BrokerError) as err:
            migration.shrink(four, "c", n)
        assert _code(err) is E.INVALID_NODE_NUMBER


@pytest.mark.parametrize(
    ("address", "nodes"),
    [
        ("127.0.0.1", ["127.0.0.1:6000", "127.0.0.1:6001"]),
        ("127.0.0.1:x", ["127.0.0.1:6000", "127.0.0.1:6001"]),
        ("127.0.0.1:70000", ["127.0.0.1:6000", "127.0.0.1:6001"]),
        (":7000", ["127.0.0.1:6000", "127.0.0.1:6001"]),
        ("127.0.0.1:7000", ["127.0.0.1:6000"]),
        ("127.0.0.1:7000", ["127.0.0.1:6000", "127.0.0.1:6000"]),
        ("127.0.0.1:7000", ["127.0.0.1:6000", "nope"]),
    ],
)
def test_invalid_proxy_address(address: str, nodes: list[str]) -> None:
    with pytest.raises(BrokerError) as err:
        clusters.add_proxy(BrokerMeta(), address, nodes)
    assert _code(err) is E.INVALID_PROXY_ADDRESS


def test_already_existed(four: BrokerMeta) -> None:
    with pytest.raises(BrokerError) as err:
        clusters.create_cluster(four, "c", 4)
    assert _code(err) is E.ALREADY_EXISTED
    proxy = next(iter(four.all_proxies.values()))
    with pytest.raises(BrokerError) as err:
        clusters.add_proxy(four, proxy.proxy_address, list(proxy.node_addresses))
    assert _code(err) is E.ALREADY_EXISTED
    with pytest.raises(BrokerError) as err:  # another proxy's node
        clusters.add_proxy(four, "10.0.0.9:7000", [proxy.node_addresses[1], "10.0.0.9:6000"])
    assert _code(err) is E.ALREADY_EXISTED


def test_cluster_not_found(meta: BrokerMeta) -> None:
    for call in (
        lambda: clusters.delete_cluster(meta, "c"),
        lambda: clusters.add_nodes(meta, "c", 4),
        lambda: migration.expand(meta, "c"),
        lambda: migration.shrink(meta, "c", 4),
        lambda: migration.auto_scale(meta, "c", 4),
        lambda: clusters.change_config(meta, "c", {}),
        lambda: failover.balance_masters(meta, "c"),
    ):
        with pytest.raises(BrokerError) as err:
            call()
        assert _code(err) is E.CLUSTER_NOT_FOUND


def test_proxy_not_found_and_in_use(four: BrokerMeta) -> None:
    with pytest.raises(BrokerError) as err:
        clusters.remove_proxy(four, "10.9.9.9:7000")
    assert _code(err) is E.PROXY_NOT_FOUND
    with pytest.raises(BrokerError) as err:
        failover.failover(four, "10.9.9.9:7000")
    assert _code(err) is E.PROXY_NOT_FOUND
    used = four.clusters["c"].nodes[0].proxy_address
    with pytest.raises(BrokerError) as err:
        clusters.remove_proxy(four, used)
    assert _code(err) is E.IN_USE


def test_no_available_resource(meta: BrokerMeta) -> None:
    with pytest.raises(BrokerError) as err:
        clusters.create_cluster(meta, "c", 20)  # 10 proxies; 8 exist
    assert _code(err) is E.NO_AVAILABLE_RESOURCE
    full = clusters.create_cluster(meta, "c", 16)
    with pytest.raises(BrokerError) as err:
        clusters.add_nodes(full, "c", 4)
    assert _code(err) is E.NO_AVAILABLE_RESOURCE


def test_resource_not_balance() -> None:
    # Enough proxies, but one host holds too many of them to pair across hosts.
    with pytest.raises(BrokerError) as err:
        clusters.create_cluster(make_meta([4]), "c", 4)
    assert _code(err) is E.RESOURCE_NOT_BALANCE
    lopsided = make_meta([6, 2])
    assert clusters.create_cluster(lopsided, "c", 8).clusters["c"]  # the surplus is unused
    with pytest.raises(BrokerError) as err:
        clusters.create_cluster(lopsided, "c", 12)
    assert _code(err) is E.RESOURCE_NOT_BALANCE
    with pytest.raises(BrokerError) as err:
        clusters.create_cluster(lopsided, "c", 20)
    assert _code(err) is E.NO_AVAILABLE_RESOURCE


def test_migration_running(expanding: BrokerMeta) -> None:
    for call in (
        lambda: clusters.add_nodes(expanding, "c", 4),
        lambda: clusters.add_nodes_if_needed(expanding, "c", 12),
        lambda: clusters.delete_free_nodes(expanding, "c"),
        lambda: migration.expand(expanding, "c"),
        lambda: migration.shrink(expanding, "c", 4),
        lambda: migration.auto_scale(expanding, "c", 4),
    ):
        with pytest.raises(BrokerError) as err:
            call()
        assert _code(err) is E.MIGRATION_RUNNING


def test_node_number_changing(four: BrokerMeta, expanding: BrokerMeta) -> None:
    # The entity knows an add-nodes operation runs; the seed's answer comes first.
    for meta in (four, expanding):
        with pytest.raises(BrokerError) as err:
            clusters.check_scaling_allowed(meta.clusters["c"], node_number_changing=True)
        assert _code(err) is E.NODE_NUMBER_CHANGING
    clusters.check_scaling_allowed(four.clusters["c"])


def test_node_num_already_enough(four: BrokerMeta) -> None:
    for n in (4,):
        with pytest.raises(BrokerError) as err:
            clusters.add_nodes_if_needed(four, "c", n)
        assert _code(err) is E.NODE_NUM_ALREADY_ENOUGH
    grown = clusters.add_nodes_if_needed(four, "c", 8)
    assert len(grown.clusters["c"].nodes) == 8
    with pytest.raises(BrokerError) as err:
        clusters.add_nodes_if_needed(grown, "c", 8)
    assert _code(err) is E.NODE_NUM_ALREADY_ENOUGH


def test_free_node_not_found_and_found(four: BrokerMeta) -> None:
    with pytest.raises(BrokerError) as err:
        clusters.delete_free_nodes(four, "c")
    assert _code(err) is E.FREE_NODE_NOT_FOUND
    with pytest.raises(BrokerError) as err:
        migration.expand(four, "c")  # undermoon: SLOTS_ALREADY_EVEN 400; the seed wins
    assert _code(err) is E.FREE_NODE_NOT_FOUND
    grown = clusters.add_nodes(four, "c", 8)
    with pytest.raises(BrokerError) as err:
        migration.shrink(grown, "c", 4)
    assert _code(err) is E.FREE_NODE_FOUND


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("compression_strategy", "zstd"),
        ("compression_strategy", 3),
        ("migration_limit", 0),
        ("migration_limit", "two"),
        ("migration_limit", True),
        ("replicas", "3"),
    ],
)
def test_invalid_config(four: BrokerMeta, key: str, value: object) -> None:
    with pytest.raises(BrokerError) as err:
        clusters.change_config(four, "c", {key: value})
    assert _code(err) is E.INVALID_CONFIG
    body = err.value.body()
    assert body["key"] == key and body["value"] == str(value) and body["message"]


def test_meta_version_and_epochs(four: BrokerMeta) -> None:
    with pytest.raises(BrokerError) as err:
        epochs.restore(four, BrokerMeta(version="mem-broker-0.0", global_epoch=99))
    assert _code(err) is E.INVALID_META_VERSION
    with pytest.raises(BrokerError) as err:
        epochs.restore(four, BrokerMeta(global_epoch=four.global_epoch - 1))
    assert _code(err) is E.EPOCH_SMALLER_THAN_CURRENT
    for n in (four.global_epoch, four.global_epoch - 1, 0):
        with pytest.raises(BrokerError) as err:
            epochs.force_bump_epoch(four, n)
        assert _code(err) is E.EPOCH_SMALLER_THAN_CURRENT


def test_migration_task_errors(expanding: BrokerMeta) -> None:
    task = running_migrations(expanding.clusters["c"])[0]
    stable = MigrationTask(cluster_name="c", slot_range=expanding.clusters["c"].nodes[0].slots[0])
    with pytest.raises(BrokerError) as err:
        migration.commit_migration(expanding, stable)
    assert _code(err) is E.INVALID_MIGRATION_TASK
    done = migration.commit_migration(expanding, task)
    with pytest.raises(BrokerError) as err:
        migration.commit_migration(done, task)  # twice
    assert _code(err) is E.MIGRATION_TASK_NOT_FOUND
    # A failover of the source restarts the move under a new epoch: the old task is stale.
    assert task.slot_range.meta is not None
    moved = failover.failover(expanding, task.slot_range.meta.src_proxy_address).meta
    with pytest.raises(BrokerError) as err:
        migration.commit_migration(moved, task)
    assert _code(err) is E.MIGRATION_TASK_NOT_FOUND
