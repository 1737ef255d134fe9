"""``BrokerWorkflow`` (id ``broker/<name>``): the undermoon memory broker's metadata, and
the operations that make Redis follow it.

Requests arrive as Updates. Each validator runs the pure planner on a projection of the
state (the state with every request accepted before applied), so answers are exact under
a burst. The handler records the request and waits; the **main loop** applies it with the
planner (new metadata, epochs bumped) and queues the operation that changes Redis, on the
shared ``OperationQueue`` of a lane: ``cluster/<name>`` for a cluster's nodes and slots,
``roles/<name>`` for failovers and balancing (they must not wait behind a migration whose
source may be the proxy that failed), ``proxies`` for local proxies.

Why the main loop and not the handler applies the metadata: the loop also changes it
on history events (an operation's commit, a ping reading, a timer). In a workflow task
rebuilt after an eviction, an update can arrive in the same activation as the events
before it and run before the loop has handled them, while a replay handles them first
(docs/design-notes.md, "Burst-safe entities"). A handler that planned on the state it sees
could then plan differently on replay. The loop handles history-driven work first and
requests last, so both see the same state in the same order. For the same reason every
command (children, signals, cancels, the ping timer and activity) is issued by the loop,
history-driven ones before request-driven ones, and time comes from the ping clock's
ticks rather than ``workflow.now()`` at request time.

Modules: ``requests`` (updates, validators, what a handler waits for), ``detection`` (the
clock, pings, failovers of failed proxies), ``replication`` (metadata PUT to replica
brokers), ``planning`` (what each request does, pure),
``operations`` (the child workflow that changes Redis).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from temporalio import workflow

from scaleflow.workflows.broker.detection import FailureDetection
from scaleflow.workflows.broker.operations import BrokerOperationWorkflow
from scaleflow.workflows.broker.replication import MetaReplication
from scaleflow.workflows.broker.requests import (
    REPLIES_KEPT,
    OpState,
    Pending,
    RequestHandlers,
    invalid,
    rejection,
)
from scaleflow.workflows.queue import Entry, OperationQueue, start_operation

with workflow.unsafe.imports_passed_through():
    from scaleflow.core.broker.activity_io import PingNodesResult
    from scaleflow.core.broker.chunks import is_migrating
    from scaleflow.core.broker.clusters import add_proxy
    from scaleflow.core.broker.errors import BrokerError
    from scaleflow.core.broker.migration import commit_migration
    from scaleflow.core.broker.models import BrokerConfig, BrokerMeta
    from scaleflow.workflows.broker import failures, planning
    from scaleflow.workflows.broker.models import (
        BrokerInit,
        BrokerOpInput,
        BrokerOpResult,
        BrokerReply,
        LocalProxy,
        MoveDone,
        OpAck,
        OperationView,
        OpKind,
        OpSnapshot,
        OpStep,
        StepAction,
        broker_workflow_id,
    )
    from scaleflow.workflows.broker.planning import BrokerState, OpSpec, Outcome

# A migration operation that failed is run again after 5 s, 10 s, ... up to 10 min.
STALL_BACKOFF_S = (5.0, 600.0)
# Held proxies whose releasing operation failed are tried again after this long.
RELEASE_RETRY_S = 30.0
MIGRATING_KINDS = {OpKind.MIGRATE, OpKind.SCALE_OUT, OpKind.SCALE_DOWN}


@workflow.defn
class BrokerWorkflow(RequestHandlers, FailureDetection, MetaReplication):
    @workflow.init
    def __init__(self, init: BrokerInit) -> None:
        self.name = init.name
        self.id = broker_workflow_id(init.name)
        self.state = BrokerState(
            meta=init.meta,
            config=init.config,
            local=dict(init.local_proxies),
            held=dict(init.held),
            proxy_seq=init.proxy_seq,
        )
        self.interval = init.ping_interval_s
        self.ticks_per_run = init.ticks_per_run
        self.replies = dict(init.replies)
        self.lanes: dict[str, OperationQueue] = {}
        self.ops: dict[str, OpState] = {}
        self.requests: list[Pending] = []
        self.signals: list[MoveDone | OpAck] = []
        self.readings: list[tuple[float, PingNodesResult]] = []
        self.pinging = False
        self.clock: asyncio.TimerHandle | None = None
        self.ticks = 0
        self.ticks_seen = 0
        # The time of the last tick: a history event, the same on every replay.
        self.tick_at = workflow.now().timestamp()
        self.failing: dict[str, str] = {}  # proxy -> its failover's op id
        self.failover_after: dict[str, float] = {}
        self.stalled = dict(init.stalled)
        # After a continue-as-new, stalled migrations are retried at the first tick.
        self.retry_at: dict[str, float] = dict.fromkeys(init.stalled, 0.0)
        self.doomed: list[str] = []
        self.cancelled: set[str] = set()
        self.release_after = 0.0
        self.projection: tuple[BrokerState, set[str]] | None = None
        self.replicate_interval = init.replicate_interval_s
        self.replicating = False
        self.replicated_at = 0.0
        self.replica_failures: dict[str, str] = {}

    # ---- the main loop: the only place that changes state on history, and commands ---------

    @workflow.run
    async def run(self, init: BrokerInit) -> None:
        self._arm_clock()
        while True:
            await workflow.wait_condition(self._has_work)
            await self._step()
            if self._may_end() and self._idle():
                # Handlers may wait on this loop: keep serving them.
                await workflow.wait_condition(
                    lambda: workflow.all_handlers_finished() or self._real_work()
                )
                if self._idle() and workflow.all_handlers_finished():
                    workflow.continue_as_new(self._carry())

    async def _step(self) -> None:
        # History-driven work first: closed operations, the next one's turn, operations'
        # signals, ping readings, the clock; then the commands they call for.
        for lane in list(self.lanes.values()):
            for entry in lane.reap():
                self._closed(entry)
        # One lane per cluster: drop the idle ones (a deleted cluster's stay otherwise).
        self.lanes = {name: lane for name, lane in self.lanes.items() if not lane.idle()}
        await asyncio.gather(*(lane.dispatch(self._go) for lane in list(self.lanes.values())))
        self._take_signals()
        self._take_readings()
        if self.ticks != self.ticks_seen:
            self.ticks_seen = self.ticks
            self._on_tick()
        self._detect()
        await self._flush()
        # Then requests, in the order they came, and their commands.
        self._take_requests()
        self._detect()
        await self._flush()

    def _real_work(self) -> bool:
        return (
            any(lane.has_work() for lane in self.lanes.values())
            or bool(self.requests or self.signals or self.readings)
            or self.ticks != self.ticks_seen
        )

    def _has_work(self) -> bool:
        return self._real_work() or (self._may_end() and self._idle())

    def _idle(self) -> bool:
        return (
            all(lane.idle() for lane in self.lanes.values())
            and not (self.requests or self.signals or self.readings or self.pinging or self.doomed)
            and not self.replicating
            and self.ticks == self.ticks_seen
        )

    def _may_end(self) -> bool:
        return self.ticks >= self.ticks_per_run or workflow.info().is_continue_as_new_suggested()

    def _carry(self) -> BrokerInit:
        return BrokerInit(
            name=self.name,
            meta=self.state.meta,
            config=self.state.config,
            ping_interval_s=self.interval,
            replicate_interval_s=self.replicate_interval,
            ticks_per_run=self.ticks_per_run,
            local_proxies=self.state.local,
            held=self.state.held,
            proxy_seq=self.state.proxy_seq,
            replies=dict(list(self.replies.items())[-REPLIES_KEPT:]),
            stalled=self.stalled,
        )

    async def _flush(self) -> None:
        """Commands for what was just decided: new children, cancels, new metadata."""
        self._arm_clock()
        await asyncio.gather(*(lane.start_new(self._start) for lane in list(self.lanes.values())))
        for op_id, st in list(self.ops.items()):
            if st.entry.start_error:  # the queue dropped it; its handler says why
                del self.ops[op_id]
                if st.spec.failover_of is not None:
                    self.failing.pop(st.spec.failover_of, None)
        doomed, self.doomed = self.doomed, []
        await asyncio.gather(*(self._cancel(op_id) for op_id in doomed))
        # A cancelled operation gets no new metadata: it ends as cancelled, not done.
        self.cancelled |= set(doomed)
        await self._push()
        self.projection = None

    # ---- requests: decided here, in the order they came -----------------------------------

    def _take_requests(self) -> None:
        taken, self.requests = self.requests, []
        for pending in taken:
            try:
                out = planning.decide(self.state, pending.update, pending.req, self._context())
            except BrokerError as err:
                pending.error = rejection(err)
            except Exception as err:  # a bug must not fail every workflow task
                workflow.logger.exception("broker %s: %s failed", self.name, pending.update)
                pending.error = invalid(err)
            else:
                pending.op = self._apply(out, pending.op_id)
                pending.wait = out.wait
                pending.reply = BrokerReply(
                    epoch=self.state.meta.global_epoch,
                    operation=pending.op.entry.op_id if pending.op else None,
                    scale_op=out.scale_op,
                )
            pending.decided = True

    def _apply(self, out: Outcome, op_id: str) -> OpState | None:
        self.state = out.state
        if out.cancel_cluster is not None:
            lanes = {
                planning.cluster_lane(out.cancel_cluster),
                planning.roles_lane(out.cancel_cluster),
            }
            self.doomed += [i for i, st in self.ops.items() if st.spec.lane in lanes]
        if out.op is None:
            return None
        return self._enqueue(out.op, op_id)

    def _enqueue(self, spec: OpSpec, op_id: str) -> OpState:
        lane = self.lanes.setdefault(spec.lane, OperationQueue())
        entry = lane.accept(Entry(op_id=op_id, kind=spec.kind.value, reason=spec.reason, args=spec))
        st = OpState(spec=spec, entry=entry)
        self.ops[op_id] = st
        if spec.failover_of is not None:
            self.failing[spec.failover_of] = op_id
        return st

    # ---- operations ----------------------------------------------------------------------------

    def _snapshot(self, st: OpState) -> OpSnapshot:
        cluster = self.state.meta.clusters.get(st.spec.cluster or "")
        acks, st.acks = st.acks, []
        st.pushed = self._version(st)
        return OpSnapshot(
            epoch=self.state.meta.global_epoch,
            cluster=cluster,
            failed_proxies=self.state.meta.failed_proxies,
            acks=acks,
        )

    def _version(self, st: OpState) -> tuple[int, tuple[str, ...]]:
        cluster = self.state.meta.clusters.get(st.spec.cluster or "")
        return (cluster.epoch if cluster else -1, tuple(self.state.meta.failed_proxies))

    async def _start(self, entry: Entry, given: bool) -> workflow.ChildWorkflowHandle[Any, Any]:
        st = self.ops[entry.op_id]
        spec = st.spec
        local = spec.kind in (OpKind.PROVISION, OpKind.DESTROY)
        return await start_operation(
            BrokerOperationWorkflow.run,
            BrokerOpInput(
                op_id=entry.op_id,
                broker=self.id,
                kind=spec.kind,
                cluster=spec.cluster,
                steps=spec.steps,
                snapshot=self._snapshot(st) if given else None,
            ),
            op_id=entry.op_id,
            direction=spec.direction,
            provider="local" if local else "redis",
            provider_cfg={"broker": self.name, "cluster": spec.cluster or ""},
            pool=f"{self.id}/{spec.cluster}" if spec.cluster else self.id,
            reason=spec.reason,
            summary=f"{spec.kind} {f'cluster {spec.cluster}' if spec.cluster else 'proxies'} "
            f"of broker {self.name} ({spec.reason})",
            memo_extra={"Broker": self.name, "Cluster": spec.cluster or "", "Kind": spec.kind},
        )

    async def _go(self, entry: Entry) -> None:
        assert entry.handle is not None
        await entry.handle.signal(BrokerOperationWorkflow.go, self._snapshot(self.ops[entry.op_id]))

    async def _push(self) -> None:
        """The new metadata to every running operation whose cluster changed."""
        sends = []
        for lane in self.lanes.values():
            entry = lane.running
            if entry is None or entry.done or entry.handle is None:
                continue
            st = self.ops[entry.op_id]
            if entry.op_id in self.cancelled:
                continue
            if st.acks or (st.pushed is not None and st.pushed != self._version(st)):
                sends.append(self._send(entry, self._snapshot(st)))
        await asyncio.gather(*sends)

    async def _send(self, entry: Entry, snap: OpSnapshot) -> None:
        assert entry.handle is not None
        try:
            await entry.handle.signal(BrokerOperationWorkflow.cluster_changed, snap)
        except Exception:
            workflow.logger.info("operation %s closed before the new metadata", entry.op_id)

    async def _cancel(self, op_id: str) -> None:
        try:
            await workflow.get_external_workflow_handle(op_id).cancel()
        except Exception:
            workflow.logger.info("operation %s closed before its cancel", op_id)

    def _closed(self, entry: Entry) -> None:
        st = self.ops.pop(entry.op_id)
        self.cancelled.discard(entry.op_id)
        spec = st.spec
        if spec.failover_of is not None:
            self.failing.pop(spec.failover_of, None)
            # Whatever came of it, the next one for that proxy waits a little.
            self.failover_after[spec.failover_of] = self.tick_at + failures.FAILOVER_RETRY_S
        if not entry.ok:
            workflow.logger.warning("broker %s: operation %s failed", self.name, entry.op_id)
            self._stall(spec)
            if spec.release:
                self.release_after = self.tick_at + RELEASE_RETRY_S
            return
        if spec.cluster in self.stalled and spec.kind in MIGRATING_KINDS:
            del self.stalled[spec.cluster]
        held = {a: c for a, c in self.state.held.items() if a not in spec.release}
        self.state = replace(self.state, held=held)
        result: BrokerOpResult = entry.result
        if spec.kind is OpKind.PROVISION:
            self._register(result)

    def _stall(self, spec: OpSpec) -> None:
        """A migration that failed is run again later, or the cluster would stay migrating
        (MIGRATION_RUNNING) with nothing moving."""
        cluster = self.state.meta.clusters.get(spec.cluster or "")
        if spec.kind not in MIGRATING_KINDS or cluster is None or not is_migrating(cluster):
            return
        n = self.stalled.get(cluster.name, 0) + 1
        self.stalled[cluster.name] = n
        low, high = STALL_BACKOFF_S
        self.retry_at[cluster.name] = self.tick_at + min(high, low * 2 ** (n - 1))

    def _register(self, result: BrokerOpResult) -> None:
        meta, local = self.state.meta, dict(self.state.local)
        for proxy in result.provisioned:
            if proxy.proxy_address not in meta.all_proxies:
                try:
                    nodes = list(proxy.node_addresses)
                    meta = add_proxy(meta, proxy.proxy_address, nodes, proxy.host)
                except BrokerError as err:
                    workflow.logger.warning("broker %s: proxy not added: %s", self.name, err)
                    continue
            local[proxy.proxy_address] = LocalProxy(proxy_id=proxy.proxy_id, host=proxy.host)
        self.state = replace(self.state, meta=meta, local=local)

    def _resume_stalled(self) -> None:
        for name, at in list(self.retry_at.items()):
            if at > self.tick_at:
                continue
            del self.retry_at[name]
            cluster = self.state.meta.clusters.get(name)
            if cluster is None or not is_migrating(cluster):
                self.stalled.pop(name, None)
                continue
            if any(
                st.spec.cluster == name and st.spec.kind in MIGRATING_KINDS
                for st in self.ops.values()
            ):
                continue
            spec = OpSpec(
                kind=OpKind.MIGRATE,
                cluster=name,
                lane=planning.cluster_lane(name),
                steps=[OpStep(action=StepAction.MIGRATE)],
                reason="resume",
            )
            self._enqueue(spec, str(workflow.uuid4()))

    def _release_orphans(self) -> None:
        """Held proxies whose operation failed are reset by a new one, after a while: a
        proxy must not stay out of use for ever."""
        if self.tick_at < self.release_after:
            return
        releasing = {a for st in self.ops.values() for a in st.spec.release}
        orphans: dict[str, list[str]] = {}
        for address, name in self.state.held.items():
            if address not in releasing:
                orphans.setdefault(name, []).append(address)
        if not orphans:
            return
        self.release_after = self.tick_at + RELEASE_RETRY_S
        meta = self.state.meta
        for name, proxies in orphans.items():
            nodes = [
                n
                for a in proxies
                if a in meta.all_proxies
                for n in meta.all_proxies[a].node_addresses
            ]
            exists = name in meta.clusters
            spec = OpSpec(
                kind=OpKind.REMOVE_FREE_NODES if exists else OpKind.DELETE,
                cluster=name,
                lane=planning.cluster_lane(name),
                # Out of a cluster that goes on: its nodes must forget them too.
                steps=[
                    OpStep(action=StepAction.REMOVE if exists else StepAction.RESET, nodes=nodes)
                ],
                reason="release",
                changes_nodes=exists,
                release=proxies,
            )
            self._enqueue(spec, str(workflow.uuid4()))

    # ---- operations' signals (history-driven: handled by the loop, in order) -------------------

    @workflow.signal
    def move_done(self, done: MoveDone) -> None:
        self.signals.append(done)

    @workflow.signal
    def nodes_ready(self, ack: OpAck) -> None:
        self.signals.append(ack)

    def _take_signals(self) -> None:
        taken, self.signals = self.signals, []
        for sig in taken:
            st = self.ops.get(sig.op_id)
            if isinstance(sig, MoveDone):
                try:
                    meta = commit_migration(self.state.meta, sig.task)
                    self.state = planning.with_meta(self.state, meta)
                except BrokerError as err:
                    # Re-planned by a failover, or committed through the API already.
                    workflow.logger.info("broker %s: move not committed: %s", self.name, err)
            elif st is not None and st.spec.expand and st.spec.cluster:
                try:
                    self.state = planning.expand_planned(self.state, st.spec.cluster)
                except BrokerError as err:
                    workflow.logger.warning("broker %s: no expand: %s", self.name, err)
                st.planned = True
            if st is not None:
                st.acks.append(sig.token)

    def _on_tick(self) -> None:
        self._prune()
        self._resume_stalled()
        self._release_orphans()
        self._ping()
        self._replicate()

    # ---- queries -----------------------------------------------------------------------------

    @workflow.query
    def meta(self) -> BrokerMeta:
        return self.state.meta

    @workflow.query
    def broker_config(self) -> BrokerConfig:
        return self.state.config

    @workflow.query
    def replication(self) -> dict[str, str]:
        """Replica address -> why the last round's PUT to it failed."""
        return self.replica_failures

    @workflow.query
    def operations(self) -> list[OperationView]:
        out = []
        for lane_name, lane in self.lanes.items():
            for entry in lane.entries:
                spec: OpSpec = entry.args
                out.append(
                    OperationView(
                        id=entry.op_id,
                        kind=spec.kind.value,
                        cluster=spec.cluster,
                        lane=lane_name,
                        state="running" if lane.running is entry else "queued",
                        reason=spec.reason,
                    )
                )
        return out
