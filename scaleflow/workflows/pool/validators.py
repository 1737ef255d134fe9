"""What a pool refuses, as pure checks over its state. The entity's update validators
call these; they read state and never change it."""

from __future__ import annotations

from temporalio import workflow

from scaleflow.workflows.queue import reject

with workflow.unsafe.imports_passed_through():
    from scaleflow.core.errors import ErrorKind
    from scaleflow.core.models import (
        Engine,
        Node,
        OperationKind,
        OperationRequest,
        PolicyChange,
        PoolConfig,
        ProviderName,
    )


def requested_count(req: OperationRequest, cfg: PoolConfig) -> int:
    if req.nodes:
        return len(req.nodes)
    if req.count is not None:
        return req.count
    if req.kind == OperationKind.SCALE_OUT:
        return cfg.scale_out_count
    return cfg.scale_in_count


def check_submit(
    req: OperationRequest,
    cfg: PoolConfig,
    has_policy: bool,
    nodes: dict[str, Node],
    projected: int,
) -> None:
    """``projected``: the size once every queued operation has run."""
    name = cfg.name
    if not has_policy:
        raise reject(ErrorKind.NO_POLICY, f"no scaling policy found for pool {name}")
    if not cfg.enabled:
        raise reject(ErrorKind.POLICY_DISABLED, f"scaling policy for pool {name} is disabled")
    if cfg.provider == ProviderName.AWS_AUTOSCALING and not cfg.provider_config.get("asg-name"):
        raise reject(
            ErrorKind.NO_PROVIDER,
            f"provider aws-autoscaling of pool {name} is not configured: "
            "provider_config needs asg-name",
        )
    if req.kind == OperationKind.ROLLOUT:
        check_rollout(req, cfg)
        return
    if req.kind == OperationKind.DATA_CLEAR:
        if cfg.engine != Engine.MEMCACHED:
            raise reject(ErrorKind.CONFLICT, f"pool {name} holds no cache data to clear")
        return
    known = set(nodes) | {n.address for n in nodes.values() if n.address}
    for ref in req.nodes or []:
        if ref not in known:
            raise reject(ErrorKind.INVALID, f"pool {name} has no node {ref!r}")
    count = requested_count(req, cfg)
    if req.kind == OperationKind.SCALE_OUT and projected + count > cfg.max_count:
        raise reject(
            ErrorKind.BOUNDS,
            f"scaling out pool {name} by {count} would exceed max_count "
            f"{cfg.max_count} (count after queued operations: {projected})",
        )
    if req.kind == OperationKind.SCALE_IN:
        if projected <= 0:
            raise reject(ErrorKind.NO_NODES, f"pool {name} has no nodes")
        if projected - count < cfg.min_count and not req.ignore_min:
            raise reject(
                ErrorKind.BOUNDS,
                f"scaling in pool {name} by {count} would go below min_count "
                f"{cfg.min_count} (count after queued operations: {projected})",
            )


def check_rollout(req: OperationRequest, cfg: PoolConfig) -> None:
    if req.cache is None:
        raise reject(ErrorKind.INVALID, "a config roll-out needs cache settings")
    if cfg.engine != Engine.MEMCACHED or cfg.provider != ProviderName.LOCAL:
        raise reject(
            ErrorKind.CONFLICT,
            f"pool {cfg.name} runs engine {cfg.engine.value} on provider "
            f"{cfg.provider.value}: cache settings are rolled out to local "
            "memcached pools only",
        )


def check_policy(change: PolicyChange, old: PoolConfig, nodes: int) -> None:
    new = change.config
    if new.name != old.name:
        raise reject(ErrorKind.INVALID, f"policy of pool {new.name} does not match {old.name}")
    moved = (new.provider, new.engine, new.provider_config.get("asg-name")) != (
        old.provider,
        old.engine,
        old.provider_config.get("asg-name"),
    )
    if moved and nodes:
        raise reject(
            ErrorKind.CONFLICT,
            f"pool {old.name} has {nodes} nodes from provider "
            f"{old.provider.value} (engine {old.engine.value}); scale it to 0 before "
            "changing its provider or engine",
        )


def check_autoscaler(cfg: PoolConfig) -> None:
    if cfg.engine != Engine.MEMCACHED:
        raise reject(
            ErrorKind.CONFLICT,
            f"pool {cfg.name} runs engine {cfg.engine.value}: the miss-rate "
            "autoscaler needs engine memcached",
        )


def check_reading(miss_rate: float, cfg: PoolConfig) -> None:
    if not 0 <= miss_rate <= 1:
        raise reject(ErrorKind.INVALID, f"test_miss_rate must be in [0, 1], got {miss_rate}")
    check_autoscaler(cfg)
