"""``PoolWorkflow``: one entity per pool. It owns configuration and membership, and
runs operations one at a time, in the order they were accepted; scale-outs of an
unslotted pool whose provider names each node by its id (``local``, ``no-op``) cannot
conflict, so a run of them goes side by side.

Handlers only validate and record; the main loop (``run``) issues every command of
the queue. See scaleflow.workflows.queue for why."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from typing import Any

from temporalio import workflow

from scaleflow.workflows.data_clear import DataClearWorkflow
from scaleflow.workflows.migration import MAP_SIGNAL
from scaleflow.workflows.operation import OperationBase
from scaleflow.workflows.pool import validators
from scaleflow.workflows.pool.membership import Membership
from scaleflow.workflows.pool.statistics import Reading, Statistics
from scaleflow.workflows.queue import (
    Entry,
    OperationQueue,
    op_id_from_update,
    reject,
    start_operation,
)
from scaleflow.workflows.rollout import APPLIED_SIGNAL, ConfigRolloutWorkflow
from scaleflow.workflows.scale_in import ScaleInWorkflow
from scaleflow.workflows.scale_out import ScaleOutWorkflow

with workflow.unsafe.imports_passed_through():
    from scaleflow.core.autoscale import AutoscalerConfig, StatsSample
    from scaleflow.core.autoscaling.decision import DecisionRecord
    from scaleflow.core.errors import ErrorKind
    from scaleflow.core.models import (
        DIRECTIONS,
        CacheSettings,
        Engine,
        NodeChange,
        OperationAccepted,
        OperationInput,
        OperationKind,
        OperationRequest,
        OperationResult,
        PolicyChange,
        PoolConfig,
        PoolInit,
        PoolView,
        ProviderName,
        operation_summary,
    )
    from scaleflow.core.slots import SlotMap

MIN_COUNT_REASON = "min_count"
# workflow.patched id: scale-outs of an unslotted pool run side by side.
PARALLEL_SCALE_OUTS = "parallel-scale-outs"
# Their nodes carry no slots: nothing orders them, so concurrent operations cannot conflict.
PARALLEL_PROVIDERS = frozenset({ProviderName.LOCAL, ProviderName.NOOP})

_RUNS = {
    OperationKind.SCALE_OUT: ScaleOutWorkflow.run,
    OperationKind.SCALE_IN: ScaleInWorkflow.run,
    OperationKind.ROLLOUT: ConfigRolloutWorkflow.run,
    OperationKind.DATA_CLEAR: DataClearWorkflow.run,
}


@workflow.defn
class PoolWorkflow:
    @workflow.init
    def __init__(self, init: PoolInit) -> None:
        self.config = init.config
        self.has_policy = init.has_policy
        self.members = Membership({n.id: n for n in init.nodes}, init.slot_map)
        self.ops = OperationQueue(requests=dict(init.requests))
        self.statistics = Statistics(
            config=init.autoscaler,
            state=init.autoscaler_state,
            samples=list(init.stats),
            counters=dict(init.counters),
            strategy_state=init.strategy_state,
            decisions=list(init.decisions),
        )
        self.sync_needed = init.sync_membership
        self.top_up_failures = 0
        self.top_up_after = workflow.now()

    @property
    def name(self) -> str:
        return self.config.name

    # ---- the main loop: the only place that issues the queue's commands ------------

    @workflow.run
    async def run(self, init: PoolInit) -> None:
        # Runs started before the change keep one operation at a time to their end.
        self.ops.allow_parallel = workflow.patched(PARALLEL_SCALE_OUTS)
        # Statistics keep time while operations run; they only collect readings.
        self._reader = asyncio.create_task(
            self.statistics.run(
                self.name, self.members.ready, self._reading_active, self._autoscaling
            )
        )
        while True:
            # The timeout wakes a pool below its minimum once its backoff is over.
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(self._has_work, timeout=self._top_up_wait())
            await self._step()
            if self._may_end() and self.ops.idle():
                # Handlers may wait on this loop (a child's start): keep serving them.
                await workflow.wait_condition(
                    lambda: (
                        (workflow.all_handlers_finished() and not self.statistics.sampling)
                        or self._queued_work()
                    )
                )
                if not self._queued_work() and workflow.all_handlers_finished():
                    # Not in the middle of a reading: its timer just ends with this run.
                    workflow.continue_as_new(self._carry())

    async def _step(self) -> None:
        # What history events caused comes first (a closed operation, the next one's
        # turn), then decisions, then children for requests just accepted. A request
        # can reach the worker in the same activation as the events before it (a
        # workflow task rebuilt after an eviction), so its commands must come last.
        for entry in self.ops.reap():
            self._closed(entry)
        parallel = self._parallel_kinds()
        for entry in self.ops.entries:
            entry.parallel = entry.kind in parallel
        await self.ops.dispatch(self._go)
        for reading in self._take_readings():
            self._decide(reading)
        if self.sync_needed and self.ops.idle():
            self.sync_needed = False
            await self.members.sync(self.name, self.config)
        if self._below_min():
            self._enqueue(
                OperationKind.SCALE_OUT,
                self._shortfall(),
                MIN_COUNT_REASON,
                str(workflow.uuid4()),
            )
        await self.ops.start_new(self._start)

    def _queued_work(self) -> bool:
        return self.ops.has_work() or bool(self.statistics.readings)

    def _has_work(self) -> bool:
        return (
            self._queued_work()
            or (self.sync_needed and self.ops.idle())
            or self._below_min()
            # Ending waits for the open operations (the loop ends only when idle): a
            # bare _may_end() would spin the loop, never yielding, into a deadlock.
            or (self._may_end() and self.ops.idle())
        )

    def _may_end(self) -> bool:
        return workflow.info().is_continue_as_new_suggested()

    def _reading_active(self) -> bool:
        return self.config.engine == Engine.MEMCACHED and not self._may_end()

    def _autoscaling(self) -> PoolConfig | None:
        """The configuration, when its own autoscaler is on and may run now."""
        cfg = self.config
        on = self.has_policy and cfg.enabled and cfg.autoscaling.enabled
        return cfg if on and not self._may_end() else None

    def _take_readings(self) -> list[Reading]:
        taken, self.statistics.readings = self.statistics.readings, []
        return taken

    def _carry(self) -> PoolInit:
        return PoolInit(
            config=self.config,
            has_policy=self.has_policy,
            nodes=list(self.members.nodes.values()),
            requests=self.ops.kept_requests(),
            sync_membership=False,
            slot_map=self.members.slot_map,
            autoscaler=self.statistics.config,
            autoscaler_state=self.statistics.state,
            stats=self.statistics.samples,
            counters=self.statistics.counters,
            strategy_state=self.statistics.strategy_state,
            decisions=self.statistics.decisions,
        )

    async def _start(self, entry: Entry, given: bool) -> workflow.ChildWorkflowHandle[Any, Any]:
        kind = OperationKind(entry.kind)
        req: OperationRequest | None = entry.args
        return await start_operation(
            _RUNS[kind],
            OperationInput(
                op_id=entry.op_id,
                pool=self.name,
                kind=kind,
                count=entry.count,
                config=self.config,
                reason=entry.reason,
                cache=req.cache if req else None,
                clear=req.clear if req else None,
                nodes=self.members.resolve(req.nodes) if req and req.nodes else None,
                snapshot=self.members.snapshot() if given else None,
            ),
            op_id=entry.op_id,
            direction=DIRECTIONS[kind],
            provider=self.config.provider.value,
            provider_cfg=self.config.provider_config,
            pool=self.name,
            reason=entry.reason,
            summary=operation_summary(kind, self.name, entry.count, entry.reason),
            memo_extra={"Pool": self.name},
        )

    async def _go(self, entry: Entry) -> None:
        assert entry.handle is not None
        await entry.handle.signal(OperationBase.go, self.members.snapshot())

    def _parallel_kinds(self) -> set[str]:
        unslotted = self.config.engine != Engine.MEMCACHED
        if unslotted and self.config.provider in PARALLEL_PROVIDERS:
            return {OperationKind.SCALE_OUT.value}
        return set()

    def _closed(self, entry: Entry) -> None:
        # Scale-outs of an unslotted pool report their nodes when they close, not one by
        # one (a signal and two workflow tasks less each); a repeat changes nothing.
        if entry.ok and isinstance(entry.result, OperationResult):
            for node in entry.result.added:
                if node.id not in self.members.nodes:
                    self.members.apply(NodeChange(op_id=entry.op_id, node=node))
        if entry.reason == MIN_COUNT_REASON:
            # A pool that cannot reach its minimum retries with backoff, not in a loop.
            self.top_up_failures = 0 if entry.ok else self.top_up_failures + 1
            delay = 0 if entry.ok else min(600, 5 * 2 ** min(self.top_up_failures, 7))
            self.top_up_after = workflow.now() + timedelta(seconds=delay)

    def _enqueue(
        self, kind: OperationKind, count: int, reason: str, op_id: str, req: Any = None
    ) -> Entry:
        delta = {OperationKind.SCALE_OUT: count, OperationKind.SCALE_IN: -count}.get(kind, 0)
        entry = Entry(
            op_id=op_id, kind=kind.value, reason=reason, remaining=delta, count=count, args=req
        )
        return self.ops.accept(entry, req.request_id if req else None)

    # ---- the autoscaler's decisions ------------------------------------------------

    def _decide(self, reading: Reading) -> None:
        if not reading.forced and not self.has_policy:
            return
        size = self._projected()
        decision = self.statistics.decide(reading, size, not self.ops.idle(), self.config)
        op_id: str | None = None
        if decision.acted and decision.count is not None:
            # The operation's first event: the source, the reading and the rule.
            reason = f"autoscaler: {decision.reason}"
            if reading.source is not None:
                reason += f" (read from {reading.source_name})"
            kind = OperationKind.SCALE_OUT if decision.count > size else OperationKind.SCALE_IN
            op_id = str(workflow.uuid4())
            self._enqueue(kind, abs(decision.count - size), reason, op_id)
        dry_run = (
            self.config.autoscaling.dry_run
            if reading.source is not None
            else self.statistics.config.dry_run
        )
        self.statistics.record(reading, decision, size, dry_run, op_id)

    @workflow.update
    def set_autoscaler(self, cfg: AutoscalerConfig) -> PoolView:
        self.statistics.configure(cfg)
        return self.view()

    @set_autoscaler.validator
    def _check_autoscaler(self, cfg: AutoscalerConfig) -> None:
        validators.check_autoscaler(self.config)

    @workflow.update
    async def evaluate(self, miss_rate: float) -> str:
        """Apply the rule to this reading at once (the seed's set_test_miss_rate)."""
        ticket = self.statistics.force(miss_rate)
        await workflow.wait_condition(lambda: ticket in self.statistics.answers)
        return self.statistics.answers.pop(ticket)

    @evaluate.validator
    def _check_evaluate(self, miss_rate: float) -> None:
        validators.check_reading(miss_rate, self.config)

    @workflow.query
    def stats(self) -> list[StatsSample]:
        return self.statistics.samples

    @workflow.query
    def decisions(self) -> list[DecisionRecord]:
        """The autoscaler's last 100 decisions, oldest first."""
        return self.statistics.decisions

    # ---- membership ---------------------------------------------------------

    def _projected(self) -> int:
        return len(self.members.nodes) + sum(e.remaining for e in self.ops.entries)

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

    @workflow.signal(name=MAP_SIGNAL)
    def slot_map_changed(self, slot_map: SlotMap) -> None:
        self.members.take_map(slot_map)

    @workflow.query
    def slots(self) -> SlotMap:
        return self.members.slot_map

    @workflow.signal
    def node_changed(self, change: NodeChange) -> None:
        moved = self.members.apply(change)
        entry = self.ops.find(change.op_id)
        if entry is None:
            return
        # The entry's outstanding count falls as its operation reports.
        if moved * entry.remaining > 0:
            entry.remaining -= moved

    # ---- operations ---------------------------------------------------------

    @workflow.update
    async def submit(self, req: OperationRequest) -> OperationAccepted:
        dup = self.ops.duplicate(req.request_id)
        if dup is not None:
            return OperationAccepted(id=await self.ops.started(dup), duplicate=True)
        count = validators.requested_count(req, self.config)
        entry = self._enqueue(
            req.kind, count, req.reason, op_id_from_update(f"pool/{self.name}"), req
        )
        return OperationAccepted(id=await self.ops.started(entry.op_id))

    @submit.validator
    def _check_submit(self, req: OperationRequest) -> None:
        if req.request_id in self.ops.requests:
            return
        validators.check_submit(
            req, self.config, self.has_policy, self.members.nodes, self._projected()
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
            self.sync_needed = self.sync_needed or not self.members.nodes
        self.has_policy = True
        return self.view()

    @set_policy.validator
    def _check_policy(self, change: PolicyChange) -> None:
        validators.check_policy(change, self.config, len(self.members.nodes))

    @workflow.update
    def remove_policy(self) -> PoolView:
        self.has_policy = False
        return self.view()

    @remove_policy.validator
    def _check_remove(self) -> None:
        if not self.has_policy:
            raise reject(ErrorKind.NO_POLICY, f"no scaling policy found for pool {self.name}")

    @workflow.update
    def ensure(self) -> PoolView:
        return self.view()

    @workflow.query
    def view(self) -> PoolView:
        return PoolView(
            name=self.name,
            config=self.config,
            has_policy=self.has_policy,
            nodes=list(self.members.nodes.values()),
            queue=self.ops.ids(),
            running=self.ops.running_id(),
            autoscaler=self.statistics.config,
        )
