"""The broker's request planning (``scaleflow.workflows.broker.planning``), without Temporal:
which operation each request needs, its steps, and the proxies held until reset."""

from __future__ import annotations

import pytest

from scaleflow.core.broker.errors import BrokerError
from scaleflow.core.broker.models import BrokerConfig, Role, ScaleOp
from scaleflow.workflows.broker import planning
from scaleflow.workflows.broker.failures import ping_targets, record_reading
from scaleflow.workflows.broker.models import (
    ClusterRequest,
    CreateClusterRequest,
    EpochRequest,
    MigrateMode,
    MigrateRequest,
    NodesRequest,
    OpKind,
    ProvisionProxiesRequest,
    ProxyRequest,
    RestoreRequest,
    StepAction,
)
from scaleflow.workflows.broker.planning import BrokerState, Context
from tests.core.broker.helpers import check_meta, make_meta, run_migrations


def state(per_host: list[int]) -> BrokerState:
    return BrokerState(meta=make_meta(per_host), config=BrokerConfig())


def actions(out: planning.Outcome) -> list[StepAction]:
    assert out.op is not None
    return [s.action for s in out.op.steps]


def decide(
    s: BrokerState, update: str, req: object, ctx: Context | None = None
) -> planning.Outcome:
    return planning.decide(s, update, req, ctx or Context())  # type: ignore[arg-type]


def test_create_resets_then_forms_all_nodes() -> None:
    out = decide(state([2, 2]), "create_cluster", CreateClusterRequest(name="c", node_number=4))
    assert actions(out) == [StepAction.RESET, StepAction.FORM]
    assert out.op is not None and out.op.changes_nodes and out.op.lane == "cluster/c"
    assert len(out.op.steps[0].nodes) == 4 and out.wait == "started"


def test_free_node_removal_holds_the_proxies_until_reset() -> None:
    s = decide(state([2, 2]), "create_cluster", CreateClusterRequest(name="c", node_number=4)).state
    s = decide(s, "add_nodes", NodesRequest(name="c", count=4)).state
    out = decide(s, "delete_free_nodes", ClusterRequest(name="c"))
    assert actions(out) == [StepAction.REMOVE] and out.wait == "done"
    assert out.op is not None and len(out.op.steps[0].nodes) == 4
    released = out.op.release
    assert len(released) == 2 and set(out.state.held) == set(released)
    # Free in the metadata, but no new cluster may take them before they are reset.
    assert all(out.state.meta.all_proxies[a].cluster is None for a in released)
    with pytest.raises(BrokerError) as caught:
        decide(out.state, "create_cluster", CreateClusterRequest(name="d", node_number=4))
    assert caught.value.code == "NO_AVAILABLE_RESOURCE"
    with pytest.raises(BrokerError) as caught:
        decide(out.state, "remove_proxy", ProxyRequest(proxy_address=released[0]))
    assert caught.value.code == "IN_USE"
    assert not out.state.meta.failed_proxies  # held is not failed
    freed = planning.replace(out.state, held={})
    decide(freed, "create_cluster", CreateClusterRequest(name="d", node_number=4))


def test_scaling_refused_while_nodes_change() -> None:
    s = decide(state([2, 2]), "create_cluster", CreateClusterRequest(name="c", node_number=4)).state
    with pytest.raises(BrokerError) as caught:
        decide(s, "add_nodes", NodesRequest(name="c", count=4), Context(changing={"c"}))
    assert caught.value.code == "NODE_NUMBER_CHANGING"


def test_auto_scale_out_forms_then_expands_and_migrates() -> None:
    s = decide(state([2, 2]), "create_cluster", CreateClusterRequest(name="c", node_number=4)).state
    out = decide(s, "migrate", MigrateRequest(name="c", mode=MigrateMode.AUTO, node_number=8))
    assert out.scale_op is ScaleOp.SCALE_OUT and out.wait == "planned"
    assert actions(out) == [
        StepAction.RESET,
        StepAction.FORM,
        StepAction.EXPAND,
        StepAction.MIGRATE,
    ]
    assert out.op is not None and out.op.expand and out.op.kind is OpKind.SCALE_OUT
    expanded = planning.expand_planned(out.state, "c")
    check_meta(run_migrations(expanded.meta, "c"))


def test_auto_scale_down_drops_free_nodes_first() -> None:
    s = decide(state([3, 3]), "create_cluster", CreateClusterRequest(name="c", node_number=4)).state
    s = decide(s, "add_nodes", NodesRequest(name="c", count=4)).state
    expand = MigrateRequest(name="c", mode=MigrateMode.EXPAND)
    s = planning.with_meta(s, run_migrations(decide(s, "migrate", expand).state.meta, "c"))
    s = decide(s, "add_nodes", NodesRequest(name="c", count=4)).state
    out = decide(s, "migrate", MigrateRequest(name="c", mode=MigrateMode.AUTO, node_number=4))
    assert out.scale_op is ScaleOp.SCALE_DOWN
    assert actions(out) == [StepAction.REMOVE, StepAction.MIGRATE]
    assert out.op is not None and len(out.op.release) == 2
    assert set(out.state.held) == set(out.op.release)
    check_meta(run_migrations(out.state.meta, "c"))


def test_failover_promotes_replaces_and_forgets() -> None:
    s = decide(
        state([2, 2, 2]), "create_cluster", CreateClusterRequest(name="c", node_number=4)
    ).state
    cluster = s.meta.clusters["c"]
    failed = cluster.nodes[0].proxy_address
    out = decide(s, "failover", ProxyRequest(proxy_address=failed))
    assert actions(out) == [
        StepAction.TAKEOVER,
        StepAction.RESET,
        StepAction.FORM,
        StepAction.REMOVE,
    ]
    assert out.op is not None and out.op.lane == "roles/c" and out.op.failover_of == failed
    # Node 3 (the peer of master node 0) takes over; the failed nodes are forgotten.
    assert out.op.steps[0].nodes == [cluster.nodes[3].address]
    assert out.op.steps[-1].nodes == list(s.meta.all_proxies[failed].node_addresses)
    check_meta(out.state.meta)
    # Done: nothing left to do for that proxy.
    assert not planning.failover_would_change(out.state, failed)


def test_failover_without_a_free_proxy_only_promotes() -> None:
    s = decide(state([1, 1]), "create_cluster", CreateClusterRequest(name="c", node_number=4)).state
    failed = s.meta.clusters["c"].nodes[2].proxy_address
    out = decide(s, "failover", ProxyRequest(proxy_address=failed))
    assert actions(out) == [StepAction.TAKEOVER]
    assert not planning.failover_would_change(out.state, failed)


def test_balance_promotes_the_home_nodes() -> None:
    s = decide(
        state([2, 2, 2]), "create_cluster", CreateClusterRequest(name="c", node_number=4)
    ).state
    failed = s.meta.clusters["c"].nodes[0].proxy_address
    s = decide(s, "failover", ProxyRequest(proxy_address=failed)).state
    out = decide(s, "balance", ClusterRequest(name="c"))
    cluster = out.state.meta.clusters["c"]
    assert actions(out) == [StepAction.TAKEOVER]
    assert out.op is not None and out.op.steps[0].nodes == [cluster.nodes[0].address]
    assert cluster.nodes[0].repl.role is Role.MASTER


def test_delete_cancels_and_resets_everything() -> None:
    s = decide(state([2, 2]), "create_cluster", CreateClusterRequest(name="c", node_number=4)).state
    out = decide(s, "delete_cluster", ClusterRequest(name="c"))
    assert out.cancel_cluster == "c" and actions(out) == [StepAction.RESET]
    assert out.op is not None and len(out.op.steps[0].nodes) == 4 and len(out.op.release) == 2


def test_restore_waits_for_idle_and_provision_numbers_proxies() -> None:
    s = state([1, 1])
    with pytest.raises(BrokerError) as caught:
        decide(s, "restore_meta", RestoreRequest(meta=s.meta), Context(busy=True))
    assert caught.value.code == "RETRY"
    out = decide(s, "provision_proxies", ProvisionProxiesRequest(hosts=["127.0.0.2"], per_host=2))
    assert out.op is not None and [p.proxy_id for p in out.op.steps[0].proxies] == ["p0", "p1"]
    assert out.state.proxy_seq == 2
    bumped = decide(s, "bump_epoch", EpochRequest())
    assert bumped.state.meta.global_epoch == s.meta.global_epoch + 1


def test_a_dead_node_reports_its_proxy() -> None:
    from scaleflow.core.broker.activity_io import PingNodesResult

    s = state([1, 1])
    targets = ping_targets(s.meta)
    assert len(targets) == 4
    meta = record_reading(s.meta, PingNodesResult(dead=[targets[1]]), "me", 10.0)
    assert list(meta.failures) == [sorted(s.meta.all_proxies)[0]]
