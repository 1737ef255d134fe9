"""The per-entity bound on in-flight updates, and the retry of refused or aborted ones."""

from __future__ import annotations

import asyncio

import pytest
from temporalio.client import WorkflowQueryFailedError
from temporalio.service import RPCError, RPCStatusCode

from scaleflow.api.limits import UpdateBusyError, UpdateLimiter, is_transient_refusal, retried

FAST = (0.001, 0.001, 0.001)


def rpc(status: RPCStatusCode, message: str) -> RPCError:
    return RPCError(message, status, b"")


EXHAUSTED = rpc(
    RPCStatusCode.RESOURCE_EXHAUSTED,
    "limit on number of concurrent in-flight updates has been reached (10)",
)
ABORTED = rpc(RPCStatusCode.UNAVAILABLE, "workflow update was aborted")


async def until(cond, timeout_s: float = 2.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout_s):
        while not cond():
            await asyncio.sleep(0.001)


async def test_at_most_n_inside_at_once() -> None:
    limiter = UpdateLimiter(max_inflight=3, wait_s=5)
    inside = peak = done = 0

    async def caller() -> None:
        nonlocal inside, peak, done
        async with limiter.slot("pool/a"):
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0.005)
            inside -= 1
        done += 1

    await asyncio.gather(*(caller() for _ in range(40)))
    assert (peak, done) == (3, 40)
    assert limiter.users("pool/a") == 0 and not limiter._gates  # idle gates are dropped


async def test_waiters_get_their_turn_in_arrival_order() -> None:
    limiter = UpdateLimiter(max_inflight=1, wait_s=5)
    order: list[int] = []
    release = asyncio.Event()

    async def holder() -> None:
        async with limiter.slot("pool/a"):
            await release.wait()

    async def waiter(i: int) -> None:
        async with limiter.slot("pool/a"):
            order.append(i)
            await asyncio.sleep(0)

    first = asyncio.create_task(holder())
    await until(lambda: limiter.users("pool/a") == 1)
    tasks = []
    for i in range(8):
        tasks.append(asyncio.create_task(waiter(i)))
        await until(lambda n=i: limiter.users("pool/a") == n + 2)
    release.set()
    await asyncio.gather(first, *tasks)
    assert order == list(range(8))


async def test_entities_do_not_wait_for_each_other() -> None:
    limiter = UpdateLimiter(max_inflight=1, wait_s=0.05)
    async with limiter.slot("pool/a"):
        async with limiter.slot("pool/b"):
            pass  # would time out if the bound were global
        with pytest.raises(UpdateBusyError):
            async with asyncio.timeout(2), limiter.slot("pool/a"):
                pass


async def test_a_wait_past_the_timeout_is_busy_with_retry_after() -> None:
    limiter = UpdateLimiter(max_inflight=1, wait_s=0.05, retry_after_s=7)
    async with limiter.slot("pool/a"):
        with pytest.raises(UpdateBusyError) as caught:
            # The outer timeout only stops a broken limiter from hanging the test.
            async with asyncio.timeout(2), limiter.slot("pool/a"):
                pass
    assert caught.value.retry_after_s == 7
    assert "pool/a" in caught.value.message and "retry later" in caught.value.message
    # The timed-out waiter left no trace: the next caller gets in at once.
    async with asyncio.timeout(1), limiter.slot("pool/a"):
        assert limiter.users("pool/a") == 1


async def test_a_cancelled_waiter_does_not_keep_a_turn() -> None:
    limiter = UpdateLimiter(max_inflight=1, wait_s=5)
    release = asyncio.Event()

    async def hold() -> None:
        async with limiter.slot("pool/a"):
            await release.wait()

    holder = asyncio.create_task(hold())
    await until(lambda: limiter.users("pool/a") == 1)
    waiter = asyncio.create_task(hold())
    await until(lambda: limiter.users("pool/a") == 2)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    release.set()
    await holder
    async with asyncio.timeout(1), limiter.slot("pool/a"):
        pass
    assert not limiter._gates


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (EXHAUSTED, True),
        (ABORTED, True),
        (rpc(RPCStatusCode.UNAVAILABLE, "Workflow Update was aborted."), True),
        (rpc(RPCStatusCode.CANCELLED, "operation was canceled"), True),
        (rpc(RPCStatusCode.UNAVAILABLE, "connection refused"), False),
        (rpc(RPCStatusCode.NOT_FOUND, "workflow not found"), False),
        (rpc(RPCStatusCode.INVALID_ARGUMENT, "update was aborted"), False),
        (RuntimeError("update was aborted"), False),
    ],
)
def test_which_refusals_are_transient(exc: BaseException, transient: bool) -> None:
    assert is_transient_refusal(exc) is transient


@pytest.mark.parametrize("refusal", [EXHAUSTED, ABORTED], ids=["exhausted", "aborted"])
async def test_a_refused_update_is_retried_until_it_succeeds(refusal: RPCError) -> None:
    limiter = UpdateLimiter(retry_delays_s=FAST)
    calls = 0

    async def attempt() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise refusal
        return "done"

    assert await limiter.run("pool/a", attempt) == "done"
    assert calls == 3


@pytest.mark.parametrize("refusal", [EXHAUSTED, ABORTED], ids=["exhausted", "aborted"])
async def test_a_refusal_that_lasts_becomes_busy(refusal: RPCError) -> None:
    limiter = UpdateLimiter(retry_delays_s=FAST, retry_after_s=3)
    calls = 0

    async def attempt() -> str:
        nonlocal calls
        calls += 1
        raise refusal

    with pytest.raises(UpdateBusyError) as caught:
        await limiter.run("pool/a", attempt)
    assert calls == len(FAST) + 1
    assert caught.value.retry_after_s == 3
    assert refusal.message in caught.value.message
    assert caught.value.__cause__ is refusal


async def test_an_abort_that_lasts_asks_whether_the_update_was_taken() -> None:
    limiter = UpdateLimiter(retry_delays_s=FAST)

    async def attempt() -> str:
        raise ABORTED

    async def taken() -> str:
        return "its result"

    async def unknown() -> str:
        raise rpc(RPCStatusCode.NOT_FOUND, "update not found")

    # Taken after all: its result, not a 429 that would have the client send it again.
    assert await limiter.run("pool/a", attempt, taken) == "its result"
    with pytest.raises(UpdateBusyError):
        await limiter.run("pool/a", attempt, unknown)


async def test_a_refusal_for_load_is_not_looked_up() -> None:
    limiter = UpdateLimiter(retry_delays_s=FAST)
    asked = 0

    async def attempt() -> str:
        raise EXHAUSTED

    async def outcome() -> str:
        nonlocal asked
        asked += 1
        return "never sent"

    with pytest.raises(UpdateBusyError):
        await limiter.run("pool/a", attempt, outcome)
    assert asked == 0


@pytest.mark.parametrize(
    "error",
    [rpc(RPCStatusCode.UNAVAILABLE, "connection refused"), rpc(RPCStatusCode.NOT_FOUND, "gone")],
)
async def test_other_errors_are_not_retried(error: RPCError) -> None:
    limiter = UpdateLimiter(retry_delays_s=FAST)
    calls = 0

    async def attempt() -> str:
        nonlocal calls
        calls += 1
        raise error

    with pytest.raises(RPCError) as caught:
        await limiter.run("pool/a", attempt)
    assert caught.value is error and calls == 1


def test_a_bound_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="max_inflight"):
        UpdateLimiter(max_inflight=0)


SLOW = WorkflowQueryFailedError(
    "[TMPRL1101] Potential deadlock detected: workflow didn't yield within 2 second(s)."
)


async def test_a_query_on_a_slow_workflow_task_is_asked_again() -> None:
    calls = 0

    async def attempt() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise SLOW
        return "meta"

    assert await retried("broker/b", attempt, FAST) == "meta"
    assert calls == 3


@pytest.mark.parametrize(
    "error",
    [SLOW, WorkflowQueryFailedError("Workflow Task in failed state: Nondeterminism error")],
    ids=["slow-every-time", "failed-task"],
)
async def test_a_query_that_keeps_failing_says_so(error: WorkflowQueryFailedError) -> None:
    calls = 0

    async def attempt() -> str:
        nonlocal calls
        calls += 1
        raise error

    with pytest.raises(WorkflowQueryFailedError) as caught:
        await retried("broker/b", attempt, FAST)
    assert caught.value is error
    assert calls == (len(FAST) + 1 if error is SLOW else 1)
