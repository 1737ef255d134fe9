"""``BrokerOperationWorkflow``: one broker operation, the steps its entity planned, run in
order against Redis.

The entity records the new metadata first and then starts the operation that makes Redis
match it (the steps are listed in ``scaleflow.workflows.broker.models.StepAction``). The
operation waits for its turn (``go``), and the entity sends it the cluster's metadata
again (``cluster_changed``) whenever it changes, so a step that is retried works on the
membership as it is now: a failover may have replaced a proxy meanwhile.

Slot moves are committed one by one: after each move the operation signals the entity
(``move_done``), which commits it with the planner and answers with the new metadata.
Moves stay visible as they finish, the migration limit lets the next one start at once,
and a move that a failover re-planned (new source or target, new epoch) is stopped and
started again in its new form.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError
from temporalio.workflow import ActivityCancellationType

from scaleflow.workflows import options

with workflow.unsafe.imports_passed_through():
    from scaleflow.core.broker.activity_io import (
        DestroyProxyInput,
        FailoverInput,
        FailoverResult,
        FormClusterResult,
        MigrateSlotsInput,
        MigrateSlotsResult,
        ProvisionProxyResult,
        RemoveNodesInput,
        RemoveNodesResult,
        form_input_for,
    )
    from scaleflow.core.broker.chunks import running_migrations
    from scaleflow.core.broker.models import Cluster, MigrationTask
    from scaleflow.core.models import ActivityReport
    from scaleflow.workflows.broker.models import (
        BrokerOpInput,
        BrokerOpResult,
        MoveDone,
        OpAck,
        OpKind,
        OpSnapshot,
        OpStep,
        StepAction,
    )

# Rounds of a membership step (form, remove): each is a few attempts on the membership
# as the entity last sent it; between rounds, wait for a new one or this long.
ROUNDS = 20
ROUND_WAIT = timedelta(seconds=10)
# A move that fails for good (say, its source is not a master yet because the failover
# that re-planned it has not reached Redis) is tried again this many times.
MOVE_ATTEMPTS = 6
# A committed move still planned after the entity's answer is run again at most so often.
MOVE_RERUNS = 3
# How long a cancelled or failed operation waits for its moves to stop.
STOP_WAIT = timedelta(seconds=30)


def _membership_options() -> dict[str, Any]:
    return {
        "start_to_close_timeout": timedelta(seconds=120),
        "heartbeat_timeout": timedelta(seconds=30),
        "retry_policy": RetryPolicy(maximum_interval=timedelta(seconds=5), maximum_attempts=3),
    }


def _migrate_options() -> dict[str, Any]:
    # Retried without end: a source that is down comes back, or a failover re-plans the
    # move. A cancel is acknowledged between slot groups, so none is left half done.
    return {
        **options.long_running(3600),
        "cancellation_type": ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
    }


def _failover_options() -> dict[str, Any]:
    return {
        "start_to_close_timeout": timedelta(seconds=60),
        "heartbeat_timeout": timedelta(seconds=20),
        "retry_policy": RetryPolicy(maximum_interval=timedelta(seconds=5), maximum_attempts=10),
    }


def _key(task: MigrationTask) -> str:
    return task.model_dump_json()


def _overlaps(a: MigrationTask, b: MigrationTask) -> bool:
    return any(
        s <= f and t <= e for s, e in a.slot_range.range_list for t, f in b.slot_range.range_list
    )


def _retrieve(job: asyncio.Task[Any]) -> None:
    """A move left to end on its own: its outcome is not needed (nor logged as lost)."""
    if not job.cancelled():
        job.exception()


def _is_cancel(err: BaseException) -> bool:
    return isinstance(err, asyncio.CancelledError) or (
        isinstance(err, ActivityError) and isinstance(err.cause, CancelledError)
    )


@workflow.defn
class BrokerOperationWorkflow:
    def __init__(self) -> None:
        self.snap: OpSnapshot | None = None
        self.pushes = 0
        self.acks: set[str] = set()
        self.tokens = 0

    # ---- what the entity sends ---------------------------------------------------------

    @workflow.signal
    def go(self, snap: OpSnapshot) -> None:
        self._take(snap)

    @workflow.signal
    def cluster_changed(self, snap: OpSnapshot) -> None:
        self._take(snap)

    def _take(self, snap: OpSnapshot) -> None:
        # Signals from the one entity arrive in the order it sent them: the last is newest.
        self.snap = snap
        self.pushes += 1
        self.acks |= set(snap.acks)

    @property
    def cluster(self) -> Cluster | None:
        return self.snap.cluster if self.snap else None

    def _healthy_nodes(self) -> list[str]:
        """The cluster's nodes, less those of proxies known as failed (they cannot answer)."""
        if self.snap is None or self.snap.cluster is None:
            return []
        failed = set(self.snap.failed_proxies)
        return [n.address for n in self.snap.cluster.nodes if n.proxy_address not in failed]

    # ---- the run -----------------------------------------------------------------------

    @workflow.run
    async def run(self, inp: BrokerOpInput) -> BrokerOpResult:
        if inp.snapshot is not None and self.snap is None:
            self._take(inp.snapshot)  # the entity was idle: this is our turn
        await workflow.wait_condition(lambda: self.snap is not None)
        result = BrokerOpResult()
        try:
            for step in inp.steps:
                await self._run_step(inp, step, result)
        except GeneratorExit:
            raise  # evicted from the worker's cache: nothing may be awaited now
        except BaseException:
            if inp.kind is OpKind.PROVISION and result.provisioned:
                # Saga: proxies made for a request that failed are not left running.
                await self._destroy([p.proxy_id for p in result.provisioned])
            raise
        return result

    async def _run_step(self, inp: BrokerOpInput, step: OpStep, result: BrokerOpResult) -> None:
        match step.action:
            case StepAction.PROVISION:
                await self._provision(inp, step, result)
            case StepAction.DESTROY:
                await self._destroy([p.proxy_id for p in step.proxies])
            case StepAction.RESET:
                await self._remove(step.nodes, keep_cluster=False)
            case StepAction.REMOVE:
                await self._remove(step.nodes, keep_cluster=True)
            case StepAction.FORM:
                await self._form(assign_slots=inp.kind is OpKind.CREATE)
            case StepAction.TAKEOVER:
                await self._takeover(step.nodes)
            case StepAction.EXPAND:
                await self._ask(inp, "nodes_ready")
            case StepAction.MIGRATE:
                await self._migrate(inp, result)

    # ---- proxies -------------------------------------------------------------------------

    async def _provision(self, inp: BrokerOpInput, step: OpStep, result: BrokerOpResult) -> None:
        known = {n.address for n in self.cluster.nodes} if self.cluster else set()
        for req in step.proxies:
            made = await workflow.execute_activity(
                "provision_redis_proxy",
                req,
                result_type=ProvisionProxyResult,
                summary=f"provision proxy {req.proxy_id} on {req.host}",
                **options.provision(),
            )
            result.provisioned.append(made.proxy)
            if inp.kind is not OpKind.PROVISION and not set(made.proxy.node_addresses) <= known:
                # Restarted on other ports: the registered addresses no longer reach it.
                raise ApplicationError(
                    f"proxy {req.proxy_id} came back as {made.proxy.node_addresses}, not as "
                    "registered: remove it and provision a new one",
                    {"source": "redis"},
                    non_retryable=True,
                )

    async def _destroy(self, proxy_ids: list[str]) -> None:
        for proxy_id in proxy_ids:
            await workflow.execute_activity(
                "destroy_redis_proxy",
                DestroyProxyInput(proxy_id=proxy_id),
                result_type=ActivityReport,
                summary=f"destroy proxy {proxy_id}",
                **options.terminate(),
            )

    async def _new_snapshot(
        self, timeout: timedelta | None, jobs: list[asyncio.Task[Any]] | None = None
    ) -> None:
        """Until the entity sends new metadata (or one of ``jobs`` ends)."""
        seen = self.pushes
        await workflow.wait_condition(
            lambda: self.pushes != seen or any(j.done() for j in jobs or []), timeout=timeout
        )

    # ---- membership ------------------------------------------------------------------------

    async def _rounds(self, attempt: Any) -> None:
        """``attempt()`` until it succeeds, on the latest membership each round."""
        last: BaseException | None = None
        for _ in range(ROUNDS):
            try:
                await attempt()
                return
            except ActivityError as err:
                if _is_cancel(err):
                    raise
                last = err
            with contextlib.suppress(asyncio.TimeoutError):
                await self._new_snapshot(ROUND_WAIT)
        assert last is not None
        raise last

    async def _remove(self, nodes: list[str], keep_cluster: bool) -> None:
        """Reset ``nodes``; with ``keep_cluster`` the cluster's other nodes forget them."""
        if not nodes:
            return

        async def attempt() -> None:
            keep = [a for a in self._healthy_nodes() if a not in nodes] if keep_cluster else []
            await workflow.execute_activity(
                "remove_redis_nodes",
                RemoveNodesInput(remove=nodes, keep=keep),
                result_type=RemoveNodesResult,
                summary=f"reset {len(nodes)} nodes: {', '.join(nodes)}",
                **_membership_options(),
            )

        await self._rounds(attempt)

    async def _form(self, assign_slots: bool) -> None:
        """``assign_slots`` for a new cluster only: in any other, a slot no member owns
        has its keys on a node left out, and must not go to an empty master."""

        async def attempt() -> None:
            cluster = self.cluster
            if cluster is None:
                return  # deleted meanwhile
            healthy = set(self._healthy_nodes())
            members = cluster.model_copy(
                update={"nodes": [n for n in cluster.nodes if n.address in healthy]}
            )
            await workflow.execute_activity(
                "form_redis_cluster",
                form_input_for(members, assign_slots=assign_slots),
                result_type=FormClusterResult,
                summary=f"form cluster {cluster.name} of {len(members.nodes)} nodes",
                **_membership_options(),
            )

        await self._rounds(attempt)

    async def _takeover(self, nodes: list[str]) -> None:
        for node in nodes:
            await workflow.execute_activity(
                "failover_redis_node",
                FailoverInput(replica=node),
                result_type=FailoverResult,
                summary=f"promote replica {node}",
                **_failover_options(),
            )

    # ---- talking to the entity ---------------------------------------------------------------

    def _token(self, what: str) -> str:
        self.tokens += 1
        return f"{what}-{self.tokens}"

    async def _signal(self, inp: BrokerOpInput, name: str, arg: Any) -> None:
        await workflow.get_external_workflow_handle(inp.broker).signal(name, arg)

    async def _ask(self, inp: BrokerOpInput, what: str) -> None:
        """Signal the entity and wait until it has handled it (its answer acks the token)."""
        token = self._token(what)
        await self._signal(inp, what, OpAck(op_id=inp.op_id, token=token))
        await workflow.wait_condition(lambda: token in self.acks)

    # ---- slot moves ---------------------------------------------------------------------------

    async def _migrate(self, inp: BrokerOpInput, result: BrokerOpResult) -> None:
        """Carry out the moves the cluster's metadata says run now, until none is left."""
        running: dict[str, tuple[MigrationTask, asyncio.Task[MigrateSlotsResult]]] = {}
        waiting: dict[str, str] = {}  # move -> token of its commit
        reruns: dict[str, int] = {}
        try:
            while True:
                cluster = self.cluster
                if cluster is None:
                    return  # the cluster was deleted
                planned = {_key(t): t for t in running_migrations(cluster)}
                for key, token in list(waiting.items()):
                    if token in self.acks:
                        del waiting[key]
                        if key in planned:
                            reruns[key] = reruns.get(key, 0) + 1
                            if reruns[key] > MOVE_RERUNS:
                                raise ApplicationError(
                                    f"move {key} is still planned after its commit",
                                    non_retryable=True,
                                )
                for key, (task, job) in list(running.items()):
                    if key not in planned and any(_overlaps(task, t) for t in planned.values()):
                        # Re-planned by a failover: run its new form at once. The old one
                        # is not waited for: its source (or target) is gone, so its
                        # attempts fail before they could hear of the cancel, and it
                        # cannot move anything any more.
                        job.cancel()
                        job.add_done_callback(_retrieve)
                        del running[key]
                for key, task in planned.items():
                    if key not in running and key not in waiting:
                        running[key] = (task, asyncio.create_task(self._move(task)))
                if not running and not waiting:
                    return
                jobs = [job for _, job in running.values()]
                await self._new_snapshot(None, jobs)
                for key, (task, job) in list(running.items()):
                    if not job.done():
                        continue
                    del running[key]
                    job.result()  # a move that failed for good fails the operation
                    result.moves += 1
                    workflow.set_current_details(
                        f"{result.moves} slot moves done, {len(running)} running"
                    )
                    waiting[key] = self._token("move")
                    await self._signal(
                        inp, "move_done", MoveDone(op_id=inp.op_id, task=task, token=waiting[key])
                    )
        except GeneratorExit:
            raise  # evicted from the worker's cache: nothing may be awaited now
        except BaseException:
            # Failed or cancelled: stop the other moves (at a slot group's end) first.
            await self._stop([job for _, job in running.values()])
            raise

    async def _stop(self, jobs: list[asyncio.Task[Any]]) -> None:
        # First let each move take in a result that came with this activation: a cancel
        # of an activity that has already closed is refused by the server.
        await asyncio.sleep(0)
        for job in jobs:
            if not job.done():
                job.cancel()
        # Bounded: a move whose source is down may never acknowledge its cancel.
        with contextlib.suppress(asyncio.TimeoutError):
            await workflow.wait_condition(lambda: all(j.done() for j in jobs), timeout=STOP_WAIT)

    async def _move(self, task: MigrationTask) -> MigrateSlotsResult:
        move = task.slot_range.meta
        assert move is not None
        req = MigrateSlotsInput(
            source=move.src_node_address,
            target=move.dst_node_address,
            ranges=task.slot_range.range_list,
        )
        for attempt in range(MOVE_ATTEMPTS):
            try:
                return await workflow.execute_activity(
                    "migrate_redis_slots",
                    req,
                    result_type=MigrateSlotsResult,
                    summary=f"move slots {task.slot_range.range_list} from {req.source} "
                    f"to {req.target}",
                    **_migrate_options(),
                )
            except ActivityError as err:
                if _is_cancel(err) or attempt == MOVE_ATTEMPTS - 1:
                    raise
            await workflow.sleep(
                timedelta(seconds=2 ** (attempt + 1)),
                summary=f"back off before moving from {req.source} again",
            )
        raise AssertionError("unreachable")
