"""``PoolWorkflow``: one entity per pool. It owns configuration and membership, and
runs operations one at a time, in the order they were accepted."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError

from scaleflow.workflows import attributes, options
from scaleflow.workflows.data_clear import DataClearWorkflow
from scaleflow.workflows.migration import MAP_SIGNAL
from scaleflow.workflows.operation import OperationBase
from scaleflow.workflows.rollout import APPLIED_SIGNAL, ConfigRolloutWorkflow
from scaleflow.workflows.scale_in import ScaleInWorkflow
from scaleflow.workflows.scale_out import ScaleOutWorkflow

with workflow.unsafe.imports_passed_through():
    from scaleflow.core.activity_io import ListNodesInput, ListNodesResult
    from scaleflow.core.autoscale import AutoscalerConfig, StatsSample, decide
    from scaleflow.core.errors import ErrorKind
    from scaleflow.core.models import (
        DIRECTIONS,
        CacheSettings,
        Engine,
        Node,
        NodeChange,
        NodeState,
        OperationAccepted,
        OperationInput,
        OperationKind,
        OperationRequest,
        PolicyChange,
        PoolInit,
        PoolSnapshot,
        PoolView,
        ProviderName,
    )
    from scaleflow.core.slots import SlotMap
    from scaleflow.core.stats_io import StatsInput, StatsResult

REQUESTS_KEPT = 1000
STATS_KEPT = 30
MIN_COUNT_REASON = "min_count"


def reject(kind: ErrorKind, message: str) -> ApplicationError:
    return ApplicationError(message, type=kind.value, non_retryable=True)


@dataclass
class Queued:
    op_id: str
    kind: OperationKind
    reason: str
    # Nodes still to add (> 0) or remove (< 0); falls as the operation reports.
    remaining: int
    # Started with its snapshot (the pool was idle): it needs no go signal.
    given: bool = False


@workflow.defn
class PoolWorkflow:
    @workflow.init
    def __init__(self, init: PoolInit) -> None:
        self.config = init.config
        self.has_policy = init.has_policy
        self.nodes: dict[str, Node] = {n.id: n for n in init.nodes}
        self.requests: dict[str, str] = dict(init.requests)
        self.queue: list[Queued] = []
        self.handles: dict[str, workflow.ChildWorkflowHandle[Any, Any]] = {}
        self.running: str | None = None
        self.sync_needed = init.sync_membership
        self.top_up_failures = 0
        self.top_up_after = workflow.now()
        self.slot_map = init.slot_map
        self.autoscaler = init.autoscaler
        self.autoscaler_state = init.autoscaler_state
        self.samples: list[StatsSample] = list(init.stats)
        self.counters = dict(init.counters)
        self.sample_now = False
        self.sampling = False
        self.syncing = False

    @property
    def name(self) -> str:
        return self.config.name

    # ---- the loop -----------------------------------------------------------

    @workflow.run
    async def run(self, init: PoolInit) -> None:
        # Statistics and the autoscaler keep time while operations run.
        self._sampler = asyncio.create_task(self._sample_loop())
        while True:
            if self.sync_needed and not self.queue:
                await self._sync()
            if self._below_min():
                await self._enqueue(OperationKind.SCALE_OUT, self._shortfall(), MIN_COUNT_REASON)
            # The timeout wakes a pool below its minimum once its backoff is over.
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(self._has_work, timeout=self._top_up_wait())
            if self.queue:
                await self._run_next()
            elif self._may_end():
                await workflow.wait_condition(workflow.all_handlers_finished)
                # Not in the middle of a reading: its timer just ends with this run.
                await workflow.wait_condition(lambda: not self.sampling)
                if not self.queue:
                    workflow.continue_as_new(self._carry())

    def _has_work(self) -> bool:
        return bool(self.queue) or self.sync_needed or self._below_min() or self._may_end()

    def _may_end(self) -> bool:
        return workflow.info().is_continue_as_new_suggested()

    def _carry(self) -> PoolInit:
        kept = dict(list(self.requests.items())[-REQUESTS_KEPT:])
        return PoolInit(
            config=self.config,
            has_policy=self.has_policy,
            nodes=list(self.nodes.values()),
            requests=kept,
            sync_membership=False,
            slot_map=self.slot_map,
            autoscaler=self.autoscaler,
            autoscaler_state=self.autoscaler_state,
            stats=self.samples,
            counters=self.counters,
        )

    # ---- statistics and the autoscaler ----------------------------------------

    async def _sample_loop(self) -> None:
        while True:
            self.sample_now = False
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(
                    lambda: self.sample_now,
                    timeout=timedelta(seconds=self.autoscaler.interval_s),
                )
            if self.config.engine != Engine.MEMCACHED or self._may_end():
                continue
            self.sampling = True
            try:
                sample = await self._sample()
                if sample is not None and self.autoscaler.auto_mode and self.has_policy:
                    await self._autoscale(sample)
            finally:
                self.sampling = False

    async def _sample(self) -> StatsSample | None:
        members = [n for n in self.nodes.values() if n.state == NodeState.READY]
        try:
            # A local activity: a short read, once a minute, needs no task queue round trip.
            got = await workflow.execute_local_activity(
                "pool_stats",
                StatsInput(
                    pool=self.name,
                    nodes=members,
                    cloudwatch=self.autoscaler.cloudwatch,
                    interval_s=self.autoscaler.interval_s,
                    previous=self.counters,
                ),
                result_type=StatsResult,
                **options.quick(attempts=3),
            )
        except ActivityError:
            workflow.logger.warning("pool %s: could not read statistics", self.name)
            return None
        self.counters = got.counters
        sample = StatsSample(
            at=workflow.now(),
            gets=got.gets,
            hits=got.hits,
            misses=got.misses,
            items=got.items,
            bytes=got.bytes,
            nodes=len(members),
            seconds=self.autoscaler.interval_s,
            cloudwatch_miss_rate=got.cloudwatch_miss_rate,
        )
        self.samples = [*self.samples, sample][-STATS_KEPT:]
        return sample

    async def _autoscale(self, sample: StatsSample) -> str:
        rate = sample.cloudwatch_miss_rate
        return await self._apply_rule(sample.miss_rate if rate is None else rate, self.autoscaler)

    async def _apply_rule(self, miss_rate: float, cfg: AutoscalerConfig) -> str:
        if self.queue:
            # The original skips a round while the previous resize still runs.
            return "a resize is still running: skipped"
        size = self._projected()
        decision = decide(
            size,
            miss_rate,
            cfg,
            self.autoscaler_state,
            workflow.now(),
            self.config.min_count,
            self.config.max_count,
        )
        self.autoscaler_state = decision.state
        if decision.size is None:
            return decision.reason
        reason = f"autoscaler: {decision.reason}"
        if decision.size > size:
            await self._enqueue(OperationKind.SCALE_OUT, decision.size - size, reason)
        else:
            await self._enqueue(OperationKind.SCALE_IN, size - decision.size, reason)
        # The counters start over: the next reading is of the resized pool.
        self.counters = {}
        return reason

    @workflow.update
    def set_autoscaler(self, cfg: AutoscalerConfig) -> PoolView:
        switched_on = cfg.auto_mode and not self.autoscaler.auto_mode
        self.autoscaler = cfg
        if switched_on:
            self.sample_now = True  # switching auto_mode on evaluates at once
        return self.view()

    @set_autoscaler.validator
    def _check_autoscaler(self, cfg: AutoscalerConfig) -> None:
        if self.config.engine != Engine.MEMCACHED:
            raise reject(
                ErrorKind.CONFLICT,
                f"pool {self.name} runs engine {self.config.engine.value}: the miss-rate "
                "autoscaler needs engine memcached",
            )

    @workflow.update
    async def evaluate(self, miss_rate: float) -> str:
        """Apply the rule to this reading at once (the seed's set_test_miss_rate)."""
        forced = self.autoscaler.model_copy(
            update={"skip_identical": False, "consecutive": 1, "cooldown_s": 0}
        )
        return await self._apply_rule(miss_rate, forced)

    @evaluate.validator
    def _check_evaluate(self, miss_rate: float) -> None:
        if not 0 <= miss_rate <= 1:
            raise reject(ErrorKind.INVALID, f"test_miss_rate must be in [0, 1], got {miss_rate}")
        self._check_autoscaler(self.autoscaler)

    @workflow.query
    def stats(self) -> list[StatsSample]:
        return self.samples

    # ---- membership ---------------------------------------------------------

    def _projected(self) -> int:
        return len(self.nodes) + sum(q.remaining for q in self.queue)

    def _shortfall(self) -> int:
        return self.config.min_count - self._projected()

    def _below_min(self) -> bool:
        return (
            self.has_policy
            and self.config.enabled
            and self._shortfall() > 0
            and workflow.now() >= self.top_up_after
        )

    def _top_up_wait(self) -> timedelta | None:
        if self.has_policy and self.config.enabled and self._shortfall() > 0:
            return max(self.top_up_after - workflow.now(), timedelta(seconds=1))
        return None

    async def _sync(self) -> None:
        self.sync_needed = False
        self.syncing = True
        try:
            await self._sync_members()
        finally:
            self.syncing = False

    async def _sync_members(self) -> None:
        try:
            found = await workflow.execute_activity(
                "list_pool_nodes",
                ListNodesInput(pool=self.name, config=self.config),
                result_type=ListNodesResult,
                **options.quick(attempts=3),
            )
        except ActivityError:
            workflow.logger.warning("pool %s: could not list the provider's nodes", self.name)
            return
        if found.nodes is None:
            return
        by_ref = {n.provider_ref: n for n in self.nodes.values()}
        self.nodes = {}
        for node in found.nodes:
            mine = by_ref.get(node.provider_ref)
            kept = mine if mine is not None else node
            self.nodes[kept.id] = kept

    @workflow.signal(name=MAP_SIGNAL)
    def slot_map_changed(self, slot_map: SlotMap) -> None:
        # Epochs only rise: a late or repeated signal cannot roll the map back.
        if slot_map.epoch > self.slot_map.epoch:
            self.slot_map = slot_map

    @workflow.query
    def slots(self) -> SlotMap:
        return self.slot_map

    @workflow.signal
    def node_changed(self, change: NodeChange) -> None:
        if change.slot_map is not None:
            self.slot_map_changed(change.slot_map)
        node = change.node
        entry = next((q for q in self.queue if q.op_id == change.op_id), None)
        if node.state == NodeState.TERMINATED:
            if self.nodes.pop(node.id, None) is not None and entry and entry.remaining < 0:
                entry.remaining += 1
            return
        is_new = node.id not in self.nodes
        self.nodes[node.id] = node
        if is_new and entry and entry.remaining > 0:
            entry.remaining -= 1

    # ---- operations ---------------------------------------------------------

    async def _enqueue(
        self,
        kind: OperationKind,
        count: int,
        reason: str,
        cache: CacheSettings | None = None,
        req: OperationRequest | None = None,
    ) -> str:
        op_id = str(workflow.uuid4())
        delta = {OperationKind.SCALE_OUT: count, OperationKind.SCALE_IN: -count}.get(kind, 0)
        idle = not self.queue and self.running is None and not self.syncing
        entry = Queued(op_id, kind, reason, delta, given=idle)
        # Queued before the await, so the order is the order of acceptance.
        self.queue.append(entry)
        direction = DIRECTIONS[kind]
        run = {
            OperationKind.SCALE_OUT: ScaleOutWorkflow.run,
            OperationKind.SCALE_IN: ScaleInWorkflow.run,
            OperationKind.ROLLOUT: ConfigRolloutWorkflow.run,
            OperationKind.DATA_CLEAR: DataClearWorkflow.run,
        }[kind]
        try:
            handle = await workflow.start_child_workflow(
                run,
                OperationInput(
                    op_id=op_id,
                    pool=self.name,
                    kind=kind,
                    count=count,
                    config=self.config,
                    reason=reason,
                    cache=cache,
                    clear=req.clear if req else None,
                    nodes=self._resolve(req.nodes) if req and req.nodes else None,
                    snapshot=self._snapshot() if idle else None,
                ),
                id=op_id,
                memo={
                    "Direction": direction,
                    "Provider": self.config.provider.value,
                    "ProviderCfg": self.config.provider_config,
                    "Pool": self.name,
                    "Reason": reason,
                },
                search_attributes=TypedSearchAttributes(
                    [
                        SearchAttributePair(attributes.POOL, self.name),
                        SearchAttributePair(attributes.DIRECTION, direction),
                        SearchAttributePair(attributes.PROVIDER, self.config.provider.value),
                    ]
                ),
                parent_close_policy=workflow.ParentClosePolicy.REQUEST_CANCEL,
            )
        except BaseException:
            self.queue.remove(entry)
            raise
        self.handles[op_id] = handle
        return op_id

    async def _run_next(self) -> None:
        entry = self.queue[0]
        await workflow.wait_condition(lambda: entry.op_id in self.handles)
        handle = self.handles[entry.op_id]
        self.running = entry.op_id
        ok = True
        try:
            # A child closed while queued (cancelled) cannot take the signal; waiting on
            # it below just ends.
            if not entry.given:
                with contextlib.suppress(Exception):
                    await handle.signal(OperationBase.go, self._snapshot())
            try:
                await handle
            except ChildWorkflowError:
                ok = False
        finally:
            self.queue.pop(0)
            self.handles.pop(entry.op_id, None)
            self.running = None
        if entry.reason == MIN_COUNT_REASON:
            self._after_top_up(ok)

    def _after_top_up(self, ok: bool) -> None:
        # A pool that cannot reach its minimum retries with backoff, not in a tight loop.
        self.top_up_failures = 0 if ok else self.top_up_failures + 1
        delay = 0 if ok else min(600, 5 * 2 ** min(self.top_up_failures, 7))
        self.top_up_after = workflow.now() + timedelta(seconds=delay)

    @workflow.update
    async def submit(self, req: OperationRequest) -> OperationAccepted:
        if req.request_id in self.requests:
            return OperationAccepted(id=self.requests[req.request_id], duplicate=True)
        count = self._count(req)
        op_id = await self._enqueue_recorded(req, count)
        return OperationAccepted(id=op_id)

    async def _enqueue_recorded(self, req: OperationRequest, count: int) -> str:
        # Recorded before the first await: a concurrent repeat finds it.
        self.requests[req.request_id] = ""
        try:
            op_id = await self._enqueue(req.kind, count, req.reason, req.cache, req)
        except BaseException:
            self.requests.pop(req.request_id, None)
            raise
        self.requests[req.request_id] = op_id
        return op_id

    def _snapshot(self) -> PoolSnapshot:
        return PoolSnapshot(nodes=list(self.nodes.values()), slot_map=self.slot_map)

    def _resolve(self, refs: list[str]) -> list[str]:
        """Node ids for refs that name a node by id or by address."""
        by_address = {n.address: n.id for n in self.nodes.values() if n.address}
        return [r if r in self.nodes else by_address[r] for r in refs]

    def _count(self, req: OperationRequest) -> int:
        if req.nodes:
            return len(req.nodes)
        if req.count is not None:
            return req.count
        if req.kind == OperationKind.SCALE_OUT:
            return self.config.scale_out_count
        return self.config.scale_in_count

    @submit.validator
    def _check_submit(self, req: OperationRequest) -> None:
        if req.request_id in self.requests:
            return
        cfg = self.config
        if not self.has_policy:
            raise reject(ErrorKind.NO_POLICY, f"no scaling policy found for class {self.name}")
        if not cfg.enabled:
            raise reject(
                ErrorKind.POLICY_DISABLED, f"scaling policy for class {self.name} is disabled"
            )
        if cfg.provider == ProviderName.AWS_AUTOSCALING and not cfg.provider_config.get("asg-name"):
            raise reject(
                ErrorKind.NO_PROVIDER,
                f"provider aws-autoscaling of class {self.name} is not configured: "
                "ProviderConfig needs asg-name",
            )
        if req.kind == OperationKind.ROLLOUT:
            self._check_rollout(req)
            return
        if req.kind == OperationKind.DATA_CLEAR:
            if self.config.engine != Engine.MEMCACHED:
                raise reject(ErrorKind.CONFLICT, f"pool {self.name} holds no cache data to clear")
            return
        known = set(self.nodes) | {n.address for n in self.nodes.values() if n.address}
        for ref in req.nodes or []:
            if ref not in known:
                raise reject(ErrorKind.INVALID, f"pool {self.name} has no node {ref!r}")
        count = self._count(req)
        projected = self._projected()
        if req.kind == OperationKind.SCALE_OUT and projected + count > cfg.max_count:
            raise reject(
                ErrorKind.BOUNDS,
                f"scaling out class {self.name} by {count} would exceed MaxCount "
                f"{cfg.max_count} (count after queued operations: {projected})",
            )
        if req.kind == OperationKind.SCALE_IN:
            if projected <= 0:
                raise reject(ErrorKind.NO_NODES, f"class {self.name} has no nodes")
            if projected - count < cfg.min_count and not req.ignore_min:
                raise reject(
                    ErrorKind.BOUNDS,
                    f"scaling in class {self.name} by {count} would go below MinCount "
                    f"{cfg.min_count} (count after queued operations: {projected})",
                )

    def _check_rollout(self, req: OperationRequest) -> None:
        if req.cache is None:
            raise reject(ErrorKind.INVALID, "a config roll-out needs cache settings")
        if self.config.engine != Engine.MEMCACHED or self.config.provider != ProviderName.LOCAL:
            raise reject(
                ErrorKind.CONFLICT,
                f"pool {self.name} runs engine {self.config.engine.value} on provider "
                f"{self.config.provider.value}: cache settings are rolled out to local "
                "memcached pools only",
            )

    @workflow.signal(name=APPLIED_SIGNAL)
    def cache_settings_applied(self, cache: CacheSettings) -> None:
        self.config = self.config.model_copy(
            update={"capacity_mb": cache.capacity_mb, "eviction": cache.eviction}
        )

    # ---- configuration ------------------------------------------------------

    @workflow.update
    def set_policy(self, change: PolicyChange) -> PoolView:
        old = self.config
        self.config = change.config
        if not self.has_policy or old.provider != change.config.provider:
            self.sync_needed = self.sync_needed or not self.nodes
        self.has_policy = True
        return self.view()

    @set_policy.validator
    def _check_policy(self, change: PolicyChange) -> None:
        new, old = change.config, self.config
        if new.name != self.name:
            raise reject(ErrorKind.INVALID, f"policy class {new.name} does not match {self.name}")
        moved = (new.provider, new.engine, new.provider_config.get("asg-name")) != (
            old.provider,
            old.engine,
            old.provider_config.get("asg-name"),
        )
        if moved and self.nodes:
            raise reject(
                ErrorKind.CONFLICT,
                f"class {self.name} has {len(self.nodes)} nodes from provider "
                f"{old.provider.value} (engine {old.engine.value}); scale it to 0 before "
                "changing its provider or engine",
            )

    @workflow.update
    def remove_policy(self) -> PoolView:
        self.has_policy = False
        return self.view()

    @remove_policy.validator
    def _check_remove(self) -> None:
        if not self.has_policy:
            raise reject(ErrorKind.NO_POLICY, f"no scaling policy found for class {self.name}")

    @workflow.update
    def ensure(self) -> PoolView:
        return self.view()

    @workflow.query
    def view(self) -> PoolView:
        return PoolView(
            name=self.name,
            config=self.config,
            has_policy=self.has_policy,
            nodes=list(self.nodes.values()),
            queue=[q.op_id for q in self.queue],
            running=self.running,
            autoscaler=self.autoscaler,
        )
