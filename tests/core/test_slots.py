"""Slot hashing and plans: Redis Cluster's vectors, and minimal, complete plans."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from scaleflow.core.slots import (
    SLOTS,
    SlotMap,
    apply_move,
    crc16,
    hash_part,
    initial_map,
    plan,
    slot_of,
)


def test_crc16_matches_redis_cluster() -> None:
    assert crc16(b"123456789") == 0x31C3
    # Values from Redis Cluster's specification and CLUSTER KEYSLOT.
    assert slot_of("foo") == 12182
    assert slot_of("bar") == 5061
    assert slot_of("") == 0


def test_hash_tags() -> None:
    assert hash_part(b"{user1000}.following") == b"user1000"
    assert slot_of("{user1000}.following") == slot_of("{user1000}.followers")
    assert hash_part(b"foo{}{bar}") == b"foo{}{bar}"  # empty tag: the whole key
    assert hash_part(b"foo{{bar}}zap") == b"{bar"
    assert hash_part(b"foo{bar}{zap}") == b"bar"
    assert hash_part(b"{no-close") == b"{no-close"


def test_initial_map_gives_the_first_nodes_one_extra() -> None:
    m = initial_map(["a", "b", "c"], {})
    assert [(r.start, r.end, r.node) for r in m.ranges] == [
        (0, 5461, "a"),
        (5462, 10922, "b"),
        (10923, 16383, "c"),
    ]


def owners_ok(m: SlotMap) -> None:
    seen = [0] * SLOTS
    for r in m.ranges:
        for s in range(r.start, r.end + 1):
            seen[s] += 1
    assert seen == [1] * SLOTS, "every slot owned exactly once"


def run_plan(m: SlotMap, nodes: list[str]) -> tuple[SlotMap, int]:
    moves = plan(m, nodes)
    for mv in moves:
        assert mv.source != mv.target
        assert all(m.owner(s) == mv.source for s in (mv.start, mv.end))
        m = m.model_copy(update={"ranges": apply_move(m, mv)})
    return m, sum(mv.size for mv in moves)


names = st.lists(st.text("abcdefgh", min_size=1, max_size=3), min_size=1, max_size=12, unique=True)


@settings(max_examples=150, deadline=None)
@given(start=names, changes=st.lists(st.tuples(st.booleans(), names), max_size=4))
def test_plans_are_complete_even_and_minimal(
    start: list[str], changes: list[tuple[bool, list[str]]]
) -> None:
    m = initial_map(start, {})
    members = list(start)
    for grow, batch in changes:
        if grow:
            new = members + [n for n in batch if n not in members]
        else:
            new = [n for n in members if n not in batch] or members[:1]
        have = m.counts()
        m, moved = run_plan(m, new)
        owners_ok(m)
        counts = m.counts()
        assert set(counts) == set(new)
        assert max(counts.values()) - min(counts.values()) <= 1
        # Minimal: only surplus moves, and every surplus slot moves exactly once.
        surplus = sum(max(0, have.get(n, 0) - counts.get(n, 0)) for n in have)
        assert moved == surplus
        members = new


def test_adding_a_node_trims_from_the_ends() -> None:
    m = initial_map(["a", "b"], {})
    moves = plan(m, ["a", "b", "c"])
    assert [(mv.start, mv.end, mv.source, mv.target) for mv in moves] == [
        (5462, 8191, "a", "c"),
        (13653, 16383, "b", "c"),
    ]


def test_removing_a_node_spreads_its_slots() -> None:
    m = initial_map(["a", "b", "c", "d"], {})
    m2, moved = run_plan(m, ["a", "b", "d"])
    assert moved == 4096
    assert all(abs(n - SLOTS / 3) < 1 for n in m2.counts().values())
