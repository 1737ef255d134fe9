"""genisys services: ``ServiceScaleWorkflow`` operations and the ``ServiceWorkflow`` entity.

``ServiceScaleWorkflow`` (id: a uuid, the ``ID`` the API returns) asks a compute's
connector for one resource more or less, or for an absolute count. It is idempotent
across retries: one activity reads the running count, the workflow computes the
absolute target, and a second activity posts ``scale {number: target}``; an absolute
number is safe to repeat. Only a connector without ``/status`` or ``/scale`` (the v1
protocol) gets ``/start`` or ``/kill``, which are not idempotent (see
``scaleflow.activities.connector``).

``ServiceWorkflow`` (id ``service/<name>``) is the service's entity. It runs the
service's operations one at a time, in the order they were accepted, so two quick
upscales cannot both read the same count and both ask for count + 1. When a desired
count is set, it reads the connector's status every period (15 s, the original
poller's) and starts a correcting ``ServiceScaleWorkflow`` when the count differs, so
each correction shows in ``/v1/scale/status``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    CancelledError,
    FailureError,
)
from temporalio.exceptions import TimeoutError as TemporalTimeoutError

from scaleflow.workflows.queue import (
    Entry,
    OperationQueue,
    op_id_from_update,
    reject,
    start_operation,
)

with workflow.unsafe.imports_passed_through():
    from scaleflow.core.errors import ErrorKind
    from scaleflow.core.genisys import (
        MAX_RESOURCES,
        PROVIDER,
        Compute,
        ConnectorCall,
        DesiredRequest,
        Direction,
        ScaleCall,
        ScaleResult,
        ServiceInit,
        ServiceOpInput,
        ServiceOpResult,
        ServiceView,
        StatusResult,
        StepCall,
        StepRequest,
        StepResult,
        connector_problem,
        service_pool,
    )

# A connector that is down is waited for this long, then the operation fails.
OPERATION_DEADLINE = timedelta(hours=1)
CORRECTIONS_KEPT = 20
# Continue-as-new after this many checks even if the server does not suggest it yet:
# keeps each run's history short to read and replay.
CHECKS_PER_RUN = 500


def _connector_options() -> dict[str, Any]:
    # No attempt limit: the activities decide what is worth retrying (a connector that
    # is down) and fail at once on what is not (its refusals); the deadline bounds it.
    return {
        "start_to_close_timeout": timedelta(seconds=60),
        "schedule_to_close_timeout": OPERATION_DEADLINE,
        "retry_policy": RetryPolicy(
            initial_interval=timedelta(seconds=1),
            backoff_coefficient=2.0,
            maximum_interval=timedelta(seconds=10),
        ),
    }


def _check_options() -> dict[str, Any]:
    # A periodic check gives up quickly: the next period tries again.
    return {
        "start_to_close_timeout": timedelta(seconds=30),
        "retry_policy": RetryPolicy(maximum_interval=timedelta(seconds=5), maximum_attempts=3),
    }


def _failure_message(err: BaseException) -> str:
    """The deepest message of a failure chain: the connector's words, not a wrapper's."""
    message = str(err)
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, FailureError) and cause.message:
            message = cause.message
        cause = cause.__cause__ if isinstance(cause, FailureError) else None
    return message


@workflow.defn
class ServiceScaleWorkflow:
    def __init__(self) -> None:
        self._go = False

    @workflow.signal
    def go(self) -> None:
        self._go = True

    @workflow.run
    async def run(self, inp: ServiceOpInput) -> ServiceOpResult:
        if inp.queued:
            await workflow.wait_condition(lambda: self._go)
        try:
            return await self._scale(inp)
        except ActivityError as err:
            if isinstance(err.cause, CancelledError):
                raise
            # The failed attempt's event already carries the connector's own message;
            # the operation's failure says what did not happen, for the same compute.
            what = "upscale" if inp.direction == Direction.OUT else "downscale"
            if inp.target is not None:
                what = f"scale to {inp.target}"
            message = f"{what} of service {inp.service} on compute {inp.compute.name} failed"
            if isinstance(err.cause, TemporalTimeoutError):
                message += f": gave up after {OPERATION_DEADLINE}: {_failure_message(err)}"
            raise self._fail(inp, message) from err

    def _fail(self, inp: ServiceOpInput, message: str) -> ApplicationError:
        return ApplicationError(
            message,
            {"source": inp.compute.name},
            type=ErrorKind.PROVIDER.value,
            non_retryable=True,
        )

    async def _scale(self, inp: ServiceOpInput) -> ServiceOpResult:
        call = ConnectorCall(service=inp.service, compute=inp.compute)
        status = await workflow.execute_activity(
            "connector_status",
            call,
            result_type=StatusResult,
            summary=f"read service {inp.service}'s status on compute {inp.compute.name}",
            **_connector_options(),
        )
        if status.protocol == "v1" or status.running is None:
            if inp.target is not None:
                raise self._fail(
                    inp,
                    f"connector of compute {inp.compute.name} has no status route: "
                    f"cannot bring service {inp.service} to {inp.target} resources",
                )
            return await self._steps(call, 1 if inp.direction == Direction.OUT else -1)
        target = self._target(inp, status.running)
        if target == status.running:
            return ServiceOpResult(running=status.running, protocol="v2")
        scaled = await workflow.execute_activity(
            "connector_scale",
            ScaleCall(service=inp.service, compute=inp.compute, number=target),
            result_type=ScaleResult,
            summary=f"scale service {inp.service} to {target} on compute {inp.compute.name}",
            **_connector_options(),
        )
        if scaled.applied:
            return ServiceOpResult(running=scaled.running, protocol="v2")
        # A status route but no scale route: one v1 step for each resource of difference.
        return await self._steps(call, target - status.running)

    def _target(self, inp: ServiceOpInput, running: int) -> int:
        if inp.target is not None:
            return inp.target
        if inp.direction == Direction.OUT:
            if running >= MAX_RESOURCES:
                raise self._fail(inp, f"service {inp.service} already runs {running} resources")
            return running + 1
        if running == 0:
            raise self._fail(
                inp,
                f"service {inp.service} has no running resource to remove on compute "
                f"{inp.compute.name}",
            )
        return running - 1

    async def _steps(self, call: ConnectorCall, delta: int) -> ServiceOpResult:
        action = "start" if delta > 0 else "kill"
        running: int | None = None
        for _ in range(abs(delta)):
            done = await workflow.execute_activity(
                "connector_step",
                StepCall(service=call.service, compute=call.compute, action=action),
                result_type=StepResult,
                summary=f"{action} one resource of service {call.service}",
                **_connector_options(),
            )
            running = done.running
        return ServiceOpResult(running=running, protocol="v1")


@workflow.defn
class ServiceWorkflow:
    """Handlers only validate and record; the main loop issues every command (see
    scaleflow.workflows.queue)."""

    @workflow.init
    def __init__(self, init: ServiceInit) -> None:
        self.name = init.name
        self.period = timedelta(seconds=init.period_s)
        self.compute = init.compute
        self.desired = init.desired
        self.observed = init.observed
        self.observed_at = init.observed_at
        self.protocol = init.protocol
        self.last_error = init.last_error
        self.corrections = list(init.corrections)
        self.ops = OperationQueue()
        self.check_now = False
        self.next_check = workflow.now() + self.period
        self.checks = 0

    # ---- the loop -----------------------------------------------------------

    @workflow.run
    async def run(self, init: ServiceInit) -> None:
        while True:
            # A timeout means the period passed: _check_due() now says so.
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(
                    # Ending waits for the running operation: a bare _may_end() would
                    # spin this loop (no await) until the SDK called it a deadlock.
                    lambda: (
                        self.ops.has_work()
                        or self._idle_check_due()
                        or (self._may_end() and self.ops.idle())
                    ),
                    timeout=self._until_check() if self.ops.idle() else None,
                )
            # History-driven work first, requests just accepted last (see PoolWorkflow).
            for entry in self.ops.reap():
                self._closed(entry)
            await self.ops.dispatch(self._go)
            if self._idle_check_due():
                await self._reconcile()
            await self.ops.start_new(self._start)
            if self._may_end() and self.ops.idle():
                # Handlers may wait on this loop (a child's start): keep serving them.
                await workflow.wait_condition(
                    lambda: workflow.all_handlers_finished() or self.ops.has_work()
                )
                if self.ops.idle() and workflow.all_handlers_finished():
                    workflow.continue_as_new(self._carry())

    def _check_due(self) -> bool:
        return self.desired is not None and (self.check_now or workflow.now() >= self.next_check)

    def _idle_check_due(self) -> bool:
        return self.ops.idle() and self._check_due()

    def _until_check(self) -> timedelta | None:
        if self.desired is None:
            return None  # nothing to keep: no timer at all
        return max(self.next_check - workflow.now(), timedelta(milliseconds=10))

    def _may_end(self) -> bool:
        return self.checks >= CHECKS_PER_RUN or workflow.info().is_continue_as_new_suggested()

    def _carry(self) -> ServiceInit:
        return ServiceInit(
            name=self.name,
            period_s=self.period.total_seconds(),
            compute=self.compute,
            desired=self.desired,
            observed=self.observed,
            observed_at=self.observed_at,
            protocol=self.protocol,
            last_error=self.last_error,
            corrections=self.corrections,
        )

    # ---- operations ---------------------------------------------------------

    async def _start(self, entry: Entry, given: bool) -> workflow.ChildWorkflowHandle[Any, Any]:
        op: _Op = entry.args
        direction = Direction(entry.kind)
        cfg = {"compute": op.compute.name, "connector": op.compute.connector, "service": self.name}
        return await start_operation(
            ServiceScaleWorkflow.run,
            ServiceOpInput(
                op_id=entry.op_id,
                service=self.name,
                compute=op.compute,
                direction=direction,
                target=op.target,
                reason=entry.reason,
                queued=not given,
            ),
            op_id=entry.op_id,
            direction=direction.value,
            provider=PROVIDER,
            provider_cfg=cfg,
            pool=service_pool(self.name),
            reason=entry.reason,
            summary=(
                f"scale-{direction.value} service {self.name} to {op.target} "
                f"on compute {op.compute.name} ({entry.reason})"
            ),
            memo_extra={"Service": self.name},
        )

    async def _go(self, entry: Entry) -> None:
        assert entry.handle is not None
        await entry.handle.signal(ServiceScaleWorkflow.go)

    def _closed(self, entry: Entry) -> None:
        if not entry.ok:
            if entry.error is not None:
                self.last_error = _failure_message(entry.error)
            return
        result: ServiceOpResult = entry.result
        self.protocol = result.protocol or self.protocol
        if result.running is not None:
            self.observed = result.running
            self.observed_at = workflow.now()
            self.last_error = None

    @workflow.update
    async def step(self, req: StepRequest) -> str:
        """Queue one resource more or less; answers the operation's id once it started."""
        entry = self.ops.accept(
            Entry(
                op_id=op_id_from_update(f"service/{self.name}"),
                kind=req.direction.value,
                reason="api",
                count=1,
                args=_Op(compute=req.compute),
            )
        )
        self.compute = req.compute
        if self.desired is not None:
            # A kept count moves with a manual step, or the next check would undo it.
            delta = 1 if req.direction == Direction.OUT else -1
            self.desired = min(MAX_RESOURCES, max(0, self.desired + delta))
        return await self.ops.started(entry.op_id)

    @step.validator
    def _check_step(self, req: StepRequest) -> None:
        problem = connector_problem(req.compute.connector)
        if problem:
            raise reject(ErrorKind.INVALID, problem)

    # ---- the desired count ------------------------------------------------------

    @workflow.update
    def set_desired(self, req: DesiredRequest) -> ServiceView:
        if req.compute is not None:
            self.compute = req.compute
        self.desired = req.number
        self.check_now = True
        return self.view()

    @set_desired.validator
    def _check_desired(self, req: DesiredRequest) -> None:
        if not 0 <= req.number <= MAX_RESOURCES:
            raise reject(ErrorKind.INVALID, f"number must be an integer from 0 to {MAX_RESOURCES}.")
        if req.compute is None and self.compute is None:
            raise reject(
                ErrorKind.INVALID,
                f"No compute known for service {self.name}: give one with 'compute'.",
            )

    @workflow.signal
    def compute_changed(self, compute: Compute) -> None:
        """A compute's connector moved (PUT /compute/<name>): follow it."""
        if self.compute is not None and self.compute.name == compute.name:
            self.compute = compute

    async def _reconcile(self) -> None:
        self.check_now = False
        self.checks += 1
        try:
            await self._check_and_correct()
        finally:
            self.next_check = workflow.now() + self.period

    async def _check_and_correct(self) -> None:
        compute, desired = self.compute, self.desired
        if compute is None or desired is None:
            return
        try:
            status = await workflow.execute_activity(
                "connector_status",
                ConnectorCall(service=self.name, compute=compute),
                result_type=StatusResult,
                summary=f"check service {self.name} against its desired count",
                **_check_options(),
            )
        except ActivityError as err:
            self.last_error = _failure_message(err)
            workflow.logger.warning("service %s: status check failed: %s", self.name, err)
            return
        self.protocol = status.protocol
        if status.running is None:
            self.last_error = (
                f"connector of compute {compute.name} has no status route (v1): the desired "
                f"count of service {self.name} cannot be observed, so it is not kept"
            )
            return
        self.observed = status.running
        self.observed_at = workflow.now()
        self.last_error = None
        if status.running == desired:
            return
        op_id = str(workflow.uuid4())
        direction = Direction.OUT if desired > status.running else Direction.IN
        self.ops.accept(
            Entry(
                op_id=op_id,
                kind=direction.value,
                reason="reconcile",
                count=abs(desired - status.running),
                args=_Op(compute=compute, target=desired),
            )
        )
        self.corrections = [*self.corrections, op_id][-CORRECTIONS_KEPT:]

    @workflow.update
    def ensure(self) -> ServiceView:
        return self.view()

    @workflow.query
    def view(self) -> ServiceView:
        return ServiceView(
            service=self.name,
            compute=self.compute.name if self.compute else None,
            connector=self.compute.connector if self.compute else None,
            desired=self.desired,
            running_resources=self.observed,
            observed_at=self.observed_at,
            protocol=self.protocol,
            last_error=self.last_error,
            period_s=self.period.total_seconds(),
            running=self.ops.running_id(),
            queue=self.ops.ids(),
            corrections=list(self.corrections),
        )


@dataclass
class _Op:
    """What a queued service operation needs to start."""

    compute: Compute
    target: int | None = None
