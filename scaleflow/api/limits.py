"""Admission of workflow updates, per entity.

Temporal admits a bounded number of in-flight updates per workflow (10 on the dev
server) and refuses the rest with RESOURCE_EXHAUSTED. A burst of requests on one pool
would then answer 502 for requests that only had to wait. So the API queues its own
updates per workflow id below that bound, and retries what Temporal still refuses or
aborts; a request that cannot get through in time is told to come back (429).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TypeVar
from weakref import WeakKeyDictionary

from temporalio.client import Client, WorkflowQueryFailedError
from temporalio.service import RPCError, RPCStatusCode

log = logging.getLogger(__name__)
T = TypeVar("T")

# Below the dev server's 10, leaving room for updates sent by other processes.
DEFAULT_MAX_INFLIGHT = 8
DEFAULT_WAIT_S = 30.0
DEFAULT_RETRY_AFTER_S = 2
# Backoff between attempts of a refused or aborted update; jittered so that the
# requests of a burst do not retry in lockstep.
RETRY_DELAYS_S = (0.1, 0.25, 0.5, 1.0)


class UpdateBusyError(Exception):
    """The entity has too many updates in flight: the client should retry later (429)."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


def is_transient_refusal(exc: BaseException) -> bool:
    """Temporal refused or aborted the update for load, not for what it asked.

    RESOURCE_EXHAUSTED is a rate or in-flight limit. "workflow update was aborted"
    (UNAVAILABLE) is the server dropping admitted updates, e.g. while a workflow task
    is retried. Both are safe to retry because each update carries a stable id.
    """
    if not isinstance(exc, RPCError):
        return False
    if exc.status == RPCStatusCode.RESOURCE_EXHAUSTED:
        return True
    # The server gave up on the call's wait ("operation was canceled", seen once in a
    # burst of 100 genisys scales); our own deadlines raise RPCTimeoutOrCancelledError.
    if exc.status == RPCStatusCode.CANCELLED:
        return True
    message = exc.message.lower()
    # A query the server dropped from a busy workflow's buffer asks to be retried.
    return exc.status == RPCStatusCode.UNAVAILABLE and (
        "update was aborted" in message or "please retry" in message
    )


# The SDK's deadlock detector: an activation that did not yield within 2 s, which on a
# starved machine is a slow thread, not a stuck workflow. Its task is retried.
DEADLOCK_CODE = "TMPRL1101"


def is_slow_query(exc: BaseException) -> bool:
    """A query that failed because the workflow's activation ran past the deadlock
    timeout: the same query answers once the retried workflow task has run."""
    return isinstance(exc, WorkflowQueryFailedError) and DEADLOCK_CODE in str(exc)


@dataclass
class _Gate:
    sem: asyncio.Semaphore
    # Holders and waiters; the gate is dropped at 0 so idle entities cost nothing.
    users: int = 0


@dataclass
class UpdateLimiter:
    """At most ``max_inflight`` updates per workflow id at once; the others wait in
    order, for at most ``wait_s``."""

    max_inflight: int = DEFAULT_MAX_INFLIGHT
    wait_s: float = DEFAULT_WAIT_S
    retry_after_s: int = DEFAULT_RETRY_AFTER_S
    retry_delays_s: tuple[float, ...] = RETRY_DELAYS_S
    _gates: dict[str, _Gate] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_inflight < 1:
            raise ValueError(f"max_inflight must be at least 1, got {self.max_inflight}")

    def users(self, workflow_id: str) -> int:
        """Requests holding or waiting for a turn on ``workflow_id``."""
        gate = self._gates.get(workflow_id)
        return gate.users if gate else 0

    @asynccontextmanager
    async def slot(self, workflow_id: str) -> AsyncIterator[None]:
        gate = self._gates.get(workflow_id)
        if gate is None:
            gate = self._gates[workflow_id] = _Gate(asyncio.Semaphore(self.max_inflight))
        gate.users += 1
        try:
            try:
                async with asyncio.timeout(self.wait_s):
                    await gate.sem.acquire()
            except TimeoutError as exc:
                raise UpdateBusyError(
                    f"too many concurrent changes to {workflow_id}: no turn within "
                    f"{self.wait_s:g} s; retry later",
                    self.retry_after_s,
                ) from exc
            try:
                yield
            finally:
                gate.sem.release()
        finally:
            gate.users -= 1
            if gate.users == 0:
                del self._gates[workflow_id]

    async def run(
        self,
        workflow_id: str,
        attempt: Callable[[], Awaitable[T]],
        outcome: Callable[[], Awaitable[T]] | None = None,
    ) -> T:
        """``attempt()`` in a turn of ``workflow_id``, retried while Temporal refuses it
        for load. ``attempt`` must be safe to repeat (a stable update id); ``outcome``
        reads that update's result (see :func:`retried`)."""
        async with self.slot(workflow_id):
            return await retried(
                workflow_id, attempt, self.retry_delays_s, self.retry_after_s, outcome
            )


def is_abort(exc: RPCError) -> bool:
    return exc.status == RPCStatusCode.UNAVAILABLE and "update was aborted" in exc.message.lower()


async def retried(
    workflow_id: str,
    attempt: Callable[[], Awaitable[T]],
    delays_s: tuple[float, ...] = RETRY_DELAYS_S,
    retry_after_s: int = DEFAULT_RETRY_AFTER_S,
    outcome: Callable[[], Awaitable[T]] | None = None,
) -> T:
    """``attempt()`` retried while Temporal refuses it for load (queries too: a burst
    fills a workflow's query buffer), then :class:`UpdateBusyError` (a 429).

    An aborted update may still have been accepted (the abort can come after the
    workflow took it): before a 429, ``outcome()`` asks for the update by its id, and
    only an update Temporal does not know is answered busy."""
    for delay in (*delays_s, None):
        try:
            return await attempt()
        except WorkflowQueryFailedError as exc:
            if not is_slow_query(exc) or delay is None:
                raise
            log.info("query on %s hit a slow workflow task, retrying: %s", workflow_id, exc)
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
        except RPCError as exc:
            if not is_transient_refusal(exc):
                raise
            if delay is None:
                if outcome is not None and is_abort(exc):
                    with contextlib.suppress(RPCError):
                        return await outcome()
                raise UpdateBusyError(
                    f"Temporal is busy with {workflow_id} ({exc.message}); retry later",
                    retry_after_s,
                ) from exc
            log.info("call on %s refused for load, retrying: %s", workflow_id, exc)
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
    raise AssertionError("unreachable")  # the loop returns or raises


# One limiter per Temporal client: the bound is per workflow, and every caller in this
# process (routes, start-up loading, the dev stack) shares the client's workflows.
_LIMITERS: WeakKeyDictionary[Client, UpdateLimiter] = WeakKeyDictionary()


def attach(client: Client, limiter: UpdateLimiter) -> None:
    _LIMITERS[client] = limiter


def limiter_for(client: Client) -> UpdateLimiter:
    found = _LIMITERS.get(client)
    if found is None:
        found = _LIMITERS[client] = UpdateLimiter()
    return found
