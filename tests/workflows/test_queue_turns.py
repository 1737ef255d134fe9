"""Whose turn it is in the shared entity queue: one at a time, or a run of parallel
entries side by side when the entity allows it, never overtaking an entry that is not
parallel (pure: no workflow needed for the rule itself)."""

from __future__ import annotations

from scaleflow.workflows.queue import Entry, OperationQueue


def queue(kinds: str, allow: bool) -> OperationQueue:
    """``kinds``: one letter per entry, ``p`` parallel, ``s`` one at a time."""
    q = OperationQueue(allow_parallel=allow)
    for i, kind in enumerate(kinds):
        q.accept(Entry(op_id=f"{kind}{i}", kind="k", reason="", parallel=kind == "p"))
    return q


def turns(q: OperationQueue) -> list[str]:
    return [e.op_id for e in q._turns()]


def run(q: OperationQueue) -> list[str]:
    """Give the turn to every entry that has it (what dispatch and start_new do)."""
    got = q._turns()
    q.runners.extend(got)
    return [e.op_id for e in got]


def close(q: OperationQueue, op_id: str) -> None:
    entry = q.find(op_id)
    assert entry is not None
    entry.done = True
    assert [e.op_id for e in q.reap()] == [op_id]


def test_parallel_entries_run_together_and_the_rest_waits() -> None:
    q = queue("ppspp", allow=True)
    assert run(q) == ["p0", "p1"]
    assert turns(q) == []  # s2 waits for both
    close(q, "p1")
    assert turns(q) == []
    close(q, "p0")
    assert run(q) == ["s2"]
    assert turns(q) == []  # nothing overtakes s2
    close(q, "s2")
    assert run(q) == ["p3", "p4"]


def test_parallel_entries_join_a_parallel_run_under_way() -> None:
    q = queue("pp", allow=True)
    assert run(q) == ["p0", "p1"]
    q.accept(Entry(op_id="p2", kind="k", reason="", parallel=True))
    assert run(q) == ["p2"]
    q.accept(Entry(op_id="s3", kind="k", reason=""))
    q.accept(Entry(op_id="p4", kind="k", reason="", parallel=True))
    assert turns(q) == []


def test_without_allow_parallel_everything_runs_one_at_a_time() -> None:
    q = queue("ppsp", allow=False)
    for op_id in ("p0", "p1", "s2", "p3"):
        assert run(q) == [op_id]
        assert turns(q) == []
        close(q, op_id)
    assert q.idle()


def test_has_work_when_a_turn_came_for_a_started_entry() -> None:
    q = queue("pps", allow=True)
    for entry in q.entries:
        entry.handle = object()  # type: ignore[assignment]  # started while others ran
    assert q.has_work()
    run(q)
    assert not q.has_work()
    q.entries[0].done = True
    assert q.has_work()
