"""Starting threads from a synchronous activity without losing them to its cancellation.

Temporal cancels a sync activity by raising ``CancelledError`` into the activity's thread
by thread id (``PyThreadState_SetAsyncExc``). CPython 3.11 gives a thread that is being
started the id of the thread starting it until the new thread runs, and the raise goes to
the newest thread with that id. A cancel that arrives then kills the new thread before it
says it has started, and ``Thread.start()`` in the activity waits for it forever: the
activity thread hangs and the cancel never reaches it. Holding the cancel back while
threads start delivers it, afterwards, to the activity's own thread.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from temporalio import activity


@contextmanager
def cancel_held_while_starting_threads() -> Iterator[None]:
    """Defers a cancel of the current sync activity until the block's threads have started."""
    if not activity.in_activity():
        yield
        return
    with activity.shield_thread_cancel_exception():
        yield
