"""What each broker request does: the new state from the pure planner, and the operation
that brings Redis there. Pure code (no workflow calls), run by the entity's main loop and,
on a projection of the state, by its update validators.

Two things the planner in ``core/broker`` leaves to the caller are decided here:

- *Held proxies* (undermoon #151): a proxy that leaves a cluster is free in the metadata
  at once, but its nodes still belong to the Redis cluster until an operation has reset
  them. Until then it is *held*: allocation must not hand it to another cluster. The
  planner only skips failed proxies, so held ones are shown to it as failed.
- *Which nodes change*: an operation gets the nodes to reset, remove, promote or form,
  from the difference between the cluster before and after the plan.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

from scaleflow.core.broker import clusters, epochs, failover, failures, migration
from scaleflow.core.broker.chunks import get_cluster
from scaleflow.core.broker.errors import BrokerError, BrokerErrorCode
from scaleflow.core.broker.models import (
    BrokerConfig,
    BrokerMeta,
    Cluster,
    Role,
    ScaleOp,
)
from scaleflow.workflows.broker.models import (
    AddProxyRequest,
    BrokerConfigRequest,
    ClusterConfigRequest,
    ClusterRequest,
    CommitRequest,
    CreateClusterRequest,
    EpochRequest,
    FailureReportRequest,
    LocalProxy,
    MigrateMode,
    MigrateRequest,
    NodesRequest,
    OpKind,
    OpStep,
    ProvisionProxiesRequest,
    ProxyRequest,
    Request,
    RestoreRequest,
    StepAction,
)

# When the update answers: once decided, once its operation started, once the
# operation has planned its moves (auto scale-out), or once the operation is over.
Wait = Literal["decided", "started", "planned", "done"]

DIRECTIONS: dict[OpKind, str] = {
    OpKind.CREATE: "out",
    OpKind.DELETE: "in",
    OpKind.ADD_NODES: "out",
    OpKind.SCALE_OUT: "out",
    OpKind.MIGRATE: "out",
    OpKind.SCALE_DOWN: "in",
    OpKind.REMOVE_FREE_NODES: "in",
    OpKind.FAILOVER: "failover",
    OpKind.BALANCE: "balance",
    OpKind.PROVISION: "out",
    OpKind.DESTROY: "in",
}
PROXIES_LANE = "proxies"


def cluster_lane(name: str) -> str:
    """Operations that change a cluster's nodes or slots run one at a time."""
    return f"cluster/{name}"


def roles_lane(name: str) -> str:
    """Failovers and balancing change who is master; they must not wait behind a
    migration (its source may be the proxy that failed)."""
    return f"roles/{name}"


@dataclass
class BrokerState:
    meta: BrokerMeta
    config: BrokerConfig
    local: dict[str, LocalProxy] = field(default_factory=dict)
    held: dict[str, str] = field(default_factory=dict)
    proxy_seq: int = 0


@dataclass
class OpSpec:
    kind: OpKind
    cluster: str | None
    lane: str
    steps: list[OpStep]
    reason: str = "api"
    # NODE_NUMBER_CHANGING for scaling requests while it is queued or running.
    changes_nodes: bool = False
    # Held proxies to free once it succeeded.
    release: list[str] = field(default_factory=list)
    # The entity plans the expand when the operation's new nodes are up.
    expand: bool = False
    failover_of: str | None = None

    @property
    def direction(self) -> str:
        return DIRECTIONS[self.kind]


@dataclass
class Outcome:
    state: BrokerState
    op: OpSpec | None = None
    wait: Wait = "decided"
    scale_op: ScaleOp | None = None
    # delete_cluster: operations of this cluster accepted before are cancelled.
    cancel_cluster: str | None = None


@dataclass
class Context:
    # Clusters with an operation queued or running that changes their node number.
    changing: set[str] = field(default_factory=set)
    # Any operation queued or running, or proxies held (restore answers RETRY).
    busy: bool = False
    now: float = 0.0


# ---- helpers ---------------------------------------------------------------------------


def with_meta(state: BrokerState, meta: BrokerMeta) -> BrokerState:
    return replace(state, meta=meta)


def plan_with_held(state: BrokerState, fn: Callable[[BrokerMeta], BrokerMeta]) -> BrokerMeta:
    """``fn`` on the metadata with held proxies shown as failed, so nothing allocates them."""
    extra = [a for a in state.held if a not in state.meta.failed_proxies]
    if not extra:
        return fn(state.meta)
    view = state.meta.model_copy(update={"failed_proxies": [*state.meta.failed_proxies, *extra]})
    out = fn(view)
    if out is view:
        return state.meta  # nothing changed
    # The planner returned its own copy: take the disguise off again.
    out.failed_proxies = [p for p in out.failed_proxies if p not in extra]
    return out


def node_specs(cluster: Cluster | None) -> dict[str, tuple[Role, str | None]]:
    """address -> (role, master's address) as Redis must see it."""
    if cluster is None:
        return {}
    out: dict[str, tuple[Role, str | None]] = {}
    for node in cluster.nodes:
        if node.repl.role is Role.MASTER:
            out[node.address] = (Role.MASTER, None)
        else:
            peer = node.repl.peers[0].node_address if node.repl.peers else None
            out[node.address] = (Role.REPLICA, peer)
    return out


def masters(cluster: Cluster | None) -> list[str]:
    if cluster is None:
        return []
    return [n.address for n in cluster.nodes if n.repl.role is Role.MASTER]


def proxies_of(meta: BrokerMeta, nodes: set[str]) -> list[str]:
    return sorted(
        a for a, p in meta.all_proxies.items() if any(n in nodes for n in p.node_addresses)
    )


def _ordered(cluster: Cluster | None, nodes: set[str]) -> list[str]:
    """``nodes`` in cluster order, so steps are listed the same way every time."""
    order = [n.address for n in cluster.nodes] if cluster is not None else []
    return [a for a in order if a in nodes] + sorted(nodes - set(order))


def _provision(state: BrokerState, proxies: list[str]) -> list[OpStep]:
    local = [state.local[a].provision_input() for a in proxies if a in state.local]
    return [OpStep(action=StepAction.PROVISION, proxies=local)] if local else []


def join_steps(before: BrokerState, after: BrokerState, name: str) -> tuple[list[OpStep], set[str]]:
    """Steps that bring Redis from ``before``'s membership of ``name`` to ``after``'s, and the
    proxies that left the cluster.

    Nodes that leave, or stay with another role or master, are taken out (reset, the rest
    forget them); nodes that are new are reset in case they hold an old cluster's state;
    then the whole membership is formed.
    """
    old = node_specs(before.meta.clusters.get(name))
    new = node_specs(after.meta.clusters.get(name))
    gone = set(old) - set(new)
    changed = {a for a in set(old) & set(new) if old[a] != new[a]}
    joining = set(new) - set(old)
    cluster = after.meta.clusters.get(name)
    previous = before.meta.clusters.get(name)
    steps: list[OpStep] = []
    if gone | changed:
        steps.append(OpStep(action=StepAction.REMOVE, nodes=_ordered(previous, gone | changed)))
    steps += _provision(after, proxies_of(after.meta, joining))
    if joining:
        steps.append(OpStep(action=StepAction.RESET, nodes=_ordered(cluster, joining)))
    if cluster is not None:
        steps.append(OpStep(action=StepAction.FORM))
    left = set(proxies_of(before.meta, gone)) - set(proxies_of(after.meta, set(new)))
    return steps, left


def _hold(state: BrokerState, proxies: set[str], cluster: str) -> BrokerState:
    return replace(state, held={**state.held, **{a: cluster for a in sorted(proxies)}})


def _scaling(meta: BrokerMeta, name: str, ctx: Context) -> Cluster:
    """The cluster, if a scaling request may run on it now (MIGRATION_RUNNING and
    NODE_NUMBER_CHANGING as the seed answers them)."""
    cluster = get_cluster(meta, name)
    clusters.check_scaling_allowed(cluster, node_number_changing=name in ctx.changing)
    return cluster


# ---- requests ------------------------------------------------------------------------------


def add_proxy(state: BrokerState, req: AddProxyRequest) -> Outcome:
    meta = clusters.add_proxy(state.meta, req.proxy_address, req.nodes, req.host)
    return Outcome(with_meta(state, meta))


def remove_proxy(state: BrokerState, req: ProxyRequest) -> Outcome:
    if req.proxy_address in state.held:
        raise BrokerError(BrokerErrorCode.IN_USE, f"proxy {req.proxy_address} is still being reset")
    out = with_meta(state, clusters.remove_proxy(state.meta, req.proxy_address))
    local = state.local.get(req.proxy_address)
    if local is None:
        return Outcome(out)
    out.local = {a: p for a, p in state.local.items() if a != req.proxy_address}
    step = OpStep(action=StepAction.DESTROY, proxies=[local.provision_input()])
    op = OpSpec(kind=OpKind.DESTROY, cluster=None, lane=PROXIES_LANE, steps=[step])
    return Outcome(out, op, wait="started")


def provision_proxies(state: BrokerState, req: ProvisionProxiesRequest) -> Outcome:
    seq = state.proxy_seq
    inputs = []
    for _ in range(req.per_host):
        for host in req.hosts:
            inputs.append(LocalProxy(proxy_id=f"p{seq}", host=host).provision_input())
            seq += 1
    step = OpStep(action=StepAction.PROVISION, proxies=inputs)
    op = OpSpec(kind=OpKind.PROVISION, cluster=None, lane=PROXIES_LANE, steps=[step])
    return Outcome(replace(state, proxy_seq=seq), op, wait="done")


def create_cluster(state: BrokerState, req: CreateClusterRequest) -> Outcome:
    meta = plan_with_held(state, lambda m: clusters.create_cluster(m, req.name, req.node_number))
    after = with_meta(state, meta)
    steps, _ = join_steps(state, after, req.name)
    op = OpSpec(
        kind=OpKind.CREATE,
        cluster=req.name,
        lane=cluster_lane(req.name),
        steps=steps,
        changes_nodes=True,
    )
    return Outcome(after, op, wait="started")


def delete_cluster(state: BrokerState, req: ClusterRequest) -> Outcome:
    cluster = get_cluster(state.meta, req.name)
    meta = clusters.delete_cluster(state.meta, req.name)
    proxies = {n.proxy_address for n in cluster.nodes}
    # Proxies an earlier removal of this cluster's nodes did not get to reset.
    proxies |= {a for a, c in state.held.items() if c == req.name}
    nodes = [n.address for n in cluster.nodes] + [
        n
        for a in sorted(proxies)
        if a in state.meta.all_proxies and all(m.proxy_address != a for m in cluster.nodes)
        for n in state.meta.all_proxies[a].node_addresses
    ]
    after = _hold(with_meta(state, meta), proxies, req.name)
    step = OpStep(action=StepAction.RESET, nodes=nodes)
    op = OpSpec(
        kind=OpKind.DELETE,
        cluster=req.name,
        lane=cluster_lane(req.name),
        steps=[step],
        changes_nodes=True,
        release=sorted(proxies),
    )
    return Outcome(after, op, wait="started", cancel_cluster=req.name)


def add_nodes(state: BrokerState, req: NodesRequest, ctx: Context) -> Outcome:
    _scaling(state.meta, req.name, ctx)
    meta = plan_with_held(state, lambda m: clusters.add_nodes(m, req.name, req.count))
    return _grown(state, with_meta(state, meta), req.name, OpKind.ADD_NODES)


def add_nodes_if_needed(state: BrokerState, req: NodesRequest, ctx: Context) -> Outcome:
    # "Already enough" first: a repeated request is answered as the seed says even while
    # the first one's nodes are still joining.
    cluster = get_cluster(state.meta, req.name)
    if isinstance(req.count, int) and req.count <= len(cluster.nodes):
        clusters.add_nodes_if_needed(state.meta, req.name, req.count)
    _scaling(state.meta, req.name, ctx)
    meta = plan_with_held(state, lambda m: clusters.add_nodes_if_needed(m, req.name, req.count))
    return _grown(state, with_meta(state, meta), req.name, OpKind.ADD_NODES)


def _grown(before: BrokerState, after: BrokerState, name: str, kind: OpKind) -> Outcome:
    steps, left = join_steps(before, after, name)
    out = _hold(after, left, name)
    op = OpSpec(
        kind=kind,
        cluster=name,
        lane=cluster_lane(name),
        steps=steps,
        changes_nodes=True,
        release=sorted(left),
    )
    return Outcome(out, op, wait="started")


def delete_free_nodes(state: BrokerState, req: ClusterRequest, ctx: Context) -> Outcome:
    _scaling(state.meta, req.name, ctx)
    after = with_meta(state, clusters.delete_free_nodes(state.meta, req.name))
    steps, left = join_steps(state, after, req.name)
    # Only the removal: the nodes that stay keep their roles.
    steps = [s for s in steps if s.action is StepAction.REMOVE]
    op = OpSpec(
        kind=OpKind.REMOVE_FREE_NODES,
        cluster=req.name,
        lane=cluster_lane(req.name),
        steps=steps,
        changes_nodes=True,
        release=sorted(left),
    )
    return Outcome(_hold(after, left, req.name), op, wait="done")


def migrate(state: BrokerState, req: MigrateRequest, ctx: Context) -> Outcome:
    _scaling(state.meta, req.name, ctx)
    name = req.name
    move = OpStep(action=StepAction.MIGRATE)
    if req.mode is MigrateMode.EXPAND:
        after = with_meta(state, migration.expand(state.meta, name))
        op = OpSpec(kind=OpKind.MIGRATE, cluster=name, lane=cluster_lane(name), steps=[move])
        return Outcome(after, op, wait="started")
    if req.mode is MigrateMode.SHRINK:
        after = with_meta(state, migration.shrink(state.meta, name, req.node_number))  # type: ignore[arg-type]
        op = OpSpec(kind=OpKind.SCALE_DOWN, cluster=name, lane=cluster_lane(name), steps=[move])
        return Outcome(after, op, wait="started")
    scaled: list[ScaleOp] = []

    def auto(m: BrokerMeta) -> BrokerMeta:
        out, how = migration.auto_scale(m, name, req.node_number)  # type: ignore[arg-type]
        scaled.append(how)
        return out

    after = with_meta(state, plan_with_held(state, auto))
    how = scaled[0]
    steps, left = join_steps(state, after, name)
    after = _hold(after, left, name)
    if how is ScaleOp.SCALE_OUT:
        steps += [OpStep(action=StepAction.EXPAND), move]
        kind, wait = OpKind.SCALE_OUT, "planned"
    elif how is ScaleOp.SCALE_DOWN:
        steps = [s for s in steps if s.action is StepAction.REMOVE] + [move]
        kind, wait = OpKind.SCALE_DOWN, "started"
    else:
        steps = [s for s in steps if s.action is StepAction.REMOVE]
        kind, wait = OpKind.REMOVE_FREE_NODES, "done"
    if not steps:
        return Outcome(after, scale_op=how)
    op = OpSpec(
        kind=kind,
        cluster=name,
        lane=cluster_lane(name),
        steps=steps,
        changes_nodes=how is not ScaleOp.SCALE_DOWN,
        release=sorted(left),
        expand=how is ScaleOp.SCALE_OUT,
    )
    return Outcome(after, op, wait=wait, scale_op=how)  # type: ignore[arg-type]


def expand_planned(state: BrokerState, name: str) -> BrokerState:
    """The expand of an auto scale-out, once its new nodes are up."""
    return with_meta(state, migration.expand(state.meta, name))


def set_cluster_config(state: BrokerState, req: ClusterConfigRequest) -> Outcome:
    get_cluster(state.meta, req.name)
    for key, value in req.fields.items():
        # The planner compares values with sets: a list or an object would be a
        # TypeError there, answered as INVALID_REQUEST instead of the seed's code.
        if isinstance(value, list | dict):
            raise BrokerError(
                BrokerErrorCode.INVALID_CONFIG,
                f"{key}: expected a string or a number",
                key=key,
                value=json.dumps(value)[:100],
            )
    return Outcome(with_meta(state, clusters.change_config(state.meta, req.name, req.fields)))


def balance(state: BrokerState, req: ClusterRequest) -> Outcome:
    before = get_cluster(state.meta, req.name)
    after = with_meta(state, failover.balance_masters(state.meta, req.name))
    promoted = set(masters(after.meta.clusters[req.name])) - set(masters(before))
    if not promoted:
        return Outcome(after)
    step = OpStep(
        action=StepAction.TAKEOVER, nodes=_ordered(after.meta.clusters[req.name], promoted)
    )
    op = OpSpec(kind=OpKind.BALANCE, cluster=req.name, lane=roles_lane(req.name), steps=[step])
    return Outcome(after, op, wait="started")


def fail_over(state: BrokerState, address: str, reason: str = "api") -> Outcome:
    """Promote the replicas of ``address``'s masters, then put a free proxy in its place.

    The replacement's nodes are reset, the cluster is formed with them as replicas, and
    the failed proxy's nodes are forgotten by the rest. Without a free proxy only the
    promotion happens; the failed nodes stay listed (as replicas) until a later retry.
    """
    proxy = state.meta.all_proxies.get(address)
    if proxy is None:
        raise BrokerError(BrokerErrorCode.PROXY_NOT_FOUND, f"no proxy {address}")
    name = proxy.cluster
    if name is None and address in state.held:
        # Its old cluster still has to forget it: the operation that resets it does that.
        return Outcome(with_meta(state, failover.takeover(state.meta, address)))
    result: list[str | None] = []

    def plan(m: BrokerMeta) -> BrokerMeta:
        done = failover.failover(m, address)
        result.append(done.replaced_by)
        return done.meta

    after = with_meta(state, plan_with_held(state, plan))
    spare = result[0]
    if name is None:
        return Outcome(after)
    before_cluster, cluster = state.meta.clusters[name], after.meta.clusters[name]
    promoted = set(masters(cluster)) - set(masters(before_cluster))
    steps: list[OpStep] = []
    if promoted:
        steps.append(OpStep(action=StepAction.TAKEOVER, nodes=_ordered(cluster, promoted)))
    if spare is not None:
        spare_nodes = list(after.meta.all_proxies[spare].node_addresses)
        steps += _provision(after, [spare])
        steps.append(OpStep(action=StepAction.RESET, nodes=spare_nodes))
        steps.append(OpStep(action=StepAction.FORM))
        steps.append(OpStep(action=StepAction.REMOVE, nodes=list(proxy.node_addresses)))
    if not steps:
        return Outcome(after)
    op = OpSpec(
        kind=OpKind.FAILOVER,
        cluster=name,
        lane=roles_lane(name),
        steps=steps,
        reason=reason,
        failover_of=address,
    )
    return Outcome(after, op, wait="started")


def failover_would_change(state: BrokerState, address: str) -> bool:
    """Whether a failover of ``address`` has anything left to do (a promotion, or a free
    proxy to replace it): a proxy already taken over and still without a replacement is
    not failed over again and again."""
    proxy = state.meta.all_proxies.get(address)
    if proxy is None:
        return False
    if address not in state.meta.failed_proxies:
        return True
    if proxy.cluster is None:
        return False
    try:
        out = fail_over(state, address)
    except BrokerError:
        return False
    return out.op is not None and any(s.action is not StepAction.TAKEOVER for s in out.op.steps)


def report_failure(state: BrokerState, req: FailureReportRequest, ctx: Context) -> Outcome:
    meta = failures.add_failure(state.meta, req.proxy_address, req.reporter, ctx.now)
    return Outcome(with_meta(state, meta))


def commit_migration(state: BrokerState, req: CommitRequest) -> Outcome:
    return Outcome(with_meta(state, migration.commit_migration(state.meta, req.task)))


def bump_epoch(state: BrokerState, req: EpochRequest) -> Outcome:
    if req.epoch is None:
        # Nothing outside the broker holds its epochs here (Redis keeps its own): the
        # recovery only has to go above the broker's own.
        return Outcome(with_meta(state, epochs.recover_epoch(state.meta, 0)))
    return Outcome(with_meta(state, epochs.force_bump_epoch(state.meta, req.epoch)))


def restore_meta(state: BrokerState, req: RestoreRequest, ctx: Context) -> Outcome:
    if ctx.busy:
        raise BrokerError(BrokerErrorCode.RETRY, "operations are running: retry when idle")
    meta = epochs.restore(state.meta, req.meta)
    local = {a: p for a, p in state.local.items() if a in meta.all_proxies}
    return Outcome(replace(state, meta=meta, local=local))


def set_broker_config(state: BrokerState, req: BrokerConfigRequest) -> Outcome:
    return Outcome(replace(state, config=req.config))


# ---- dispatch ------------------------------------------------------------------------------


def decide(state: BrokerState, update: str, req: Request, ctx: Context) -> Outcome:
    """The outcome of update ``update`` with ``req``; raises ``BrokerError``."""
    match update, req:
        case "add_proxy", AddProxyRequest():
            return add_proxy(state, req)
        case "remove_proxy", ProxyRequest():
            return remove_proxy(state, req)
        case "provision_proxies", ProvisionProxiesRequest():
            return provision_proxies(state, req)
        case "create_cluster", CreateClusterRequest():
            return create_cluster(state, req)
        case "delete_cluster", ClusterRequest():
            return delete_cluster(state, req)
        case "add_nodes", NodesRequest():
            return add_nodes(state, req, ctx)
        case "add_nodes_if_needed", NodesRequest():
            return add_nodes_if_needed(state, req, ctx)
        case "delete_free_nodes", ClusterRequest():
            return delete_free_nodes(state, req, ctx)
        case "migrate", MigrateRequest():
            return migrate(state, req, ctx)
        case "set_cluster_config", ClusterConfigRequest():
            return set_cluster_config(state, req)
        case "balance", ClusterRequest():
            return balance(state, req)
        case "bump_epoch", EpochRequest():
            return bump_epoch(state, req)
        case "restore_meta", RestoreRequest():
            return restore_meta(state, req, ctx)
        case "report_failure", FailureReportRequest():
            return report_failure(state, req, ctx)
        case "failover", ProxyRequest():
            return fail_over(state, req.proxy_address)
        case "commit_migration", CommitRequest():
            return commit_migration(state, req)
        case "set_broker_config", BrokerConfigRequest():
            return set_broker_config(state, req)
    raise ValueError(f"no planner for update {update!r} with {type(req).__name__}")
