"""A sync activity cancelled while it starts a thread still ends, cancelled, in its own thread."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from temporalio.exceptions import CancelledError
from temporalio.testing import ActivityEnvironment

from scaleflow.activities.threads import cancel_held_while_starting_threads

TRIALS = 60


def _start_threads_until_cancelled() -> str:
    """What the heartbeat ticker and the ping fan-out do: start threads, over and over."""
    try:
        while True:
            with cancel_held_while_starting_threads():
                t = threading.Thread(target=lambda: None, daemon=True)
                t.start()
            t.join()
    except CancelledError:
        return "cancelled"


@pytest.fixture
def stray_exceptions() -> Iterator[list[str]]:
    """Exceptions that land in a thread other than the activity's (they end that thread)."""
    seen: list[str] = []
    old = sys.unraisablehook

    def hook(args: Any) -> None:  # sys.UnraisableHookArgs
        seen.append(repr(args.exc_value))

    sys.unraisablehook = hook
    try:
        yield seen
    finally:
        sys.unraisablehook = old


def test_a_cancel_during_thread_start_reaches_the_activity(stray_exceptions: list[str]) -> None:
    ended = 0
    for trial in range(TRIALS):
        env = ActivityEnvironment()
        outcome: list[str] = []
        runner = threading.Thread(
            target=lambda env=env, outcome=outcome: outcome.append(
                env.run(_start_threads_until_cancelled)
            ),
            daemon=True,
        )
        runner.start()
        time.sleep(0.002 + (trial % 7) * 0.001)
        env.cancel()
        runner.join(timeout=10)
        # Without the hold, the cancel kills the thread being started and start() waits
        # for it forever.
        assert not runner.is_alive(), f"trial {trial}: the activity hung in Thread.start()"
        assert outcome == ["cancelled"], f"trial {trial}: {outcome}"
        ended += 1
    assert ended == TRIALS
    assert stray_exceptions == []
