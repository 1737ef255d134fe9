"""Slot hashing and plans: Redis Cluster's vectors, and minimal, complete plans."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scaleflow.core.slots import (
    SLOTS,
    Move,
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


# ---- SlotMap edits: pure, one epoch on, every slot still owned exactly once ----------


@st.composite
def slot_maps(draw: st.DrawFn) -> SlotMap:
    """A map as operations leave it: an initial map, then a plan to other members, so
    nodes own several ranges; some nodes are addressed but own nothing."""
    start = draw(names)
    later = draw(names)
    m = initial_map(start, {n: f"127.0.0.1:{i}" for i, n in enumerate(start)})
    m = m.model_copy(update={"epoch": draw(st.integers(0, 1000))})
    addresses = {**m.addresses, **{n: f"10.0.0.1:{i}" for i, n in enumerate(later)}}
    for mv in plan(m, later):
        m = m.model_copy(update={"ranges": apply_move(m, mv)})
    return m.model_copy(update={"addresses": addresses})


def one_epoch_on(before: SlotMap, snapshot: dict[str, object], after: SlotMap) -> None:
    assert after.epoch == before.epoch + 1
    assert before.model_dump() == snapshot, "the edit must not change the map it was given"


def move_in(m: SlotMap, data: st.DataObject) -> Move:
    """A move of part of one of ``m``'s ranges to another addressed node."""
    r = data.draw(st.sampled_from(m.ranges))
    start = data.draw(st.integers(r.start, r.end))
    end = data.draw(st.integers(start, r.end))
    target = data.draw(st.sampled_from(sorted(set(m.addresses) | {"new"} - {r.node})))
    return Move(start=start, end=end, source=r.node, target=target)


@settings(max_examples=100, deadline=None)
@given(m=slot_maps(), extra=names)
def test_with_addresses_and_joined_keep_the_slots(m: SlotMap, extra: list[str]) -> None:
    snapshot = m.model_dump()
    addresses = {n: f"192.168.0.1:{i}" for i, n in enumerate(extra)}
    for after in (m.with_addresses(addresses), m.joined(addresses)):
        one_epoch_on(m, snapshot, after)
        assert after.ranges == m.ranges
        assert after.moving == m.moving
        assert after.addresses == {**m.addresses, **addresses}
        assert after.knows(addresses)
    assert m.knows(addresses) == all(m.addresses.get(n) == a for n, a in addresses.items())


@settings(max_examples=50, deadline=None)
@given(nodes=names, epoch=st.integers(0, 1000))
def test_joined_gives_an_empty_map_to_its_members(nodes: list[str], epoch: int) -> None:
    empty = SlotMap(epoch=epoch)
    addresses = {n: f"127.0.0.1:{i}" for i, n in enumerate(nodes)}
    m = empty.joined(addresses)
    one_epoch_on(empty, SlotMap(epoch=epoch).model_dump(), m)
    owners_ok(m)
    assert m.addresses == addresses
    assert [r.node for r in m.ranges] == nodes  # in order, one range each
    assert max(m.counts().values()) - min(m.counts().values()) <= 1


@settings(max_examples=100, deadline=None)
@given(m=slot_maps(), data=st.data())
def test_without_forgets_only_idle_nodes(m: SlotMap, data: st.DataObject) -> None:
    asked = data.draw(st.lists(st.sampled_from(sorted(m.addresses)), unique=True))
    idle = m.idle(asked)
    owners = set(m.counts())
    assert idle == [n for n in asked if n not in owners]
    snapshot = m.model_dump()
    after = m.without(idle)
    one_epoch_on(m, snapshot, after)
    assert after.ranges == m.ranges
    assert set(after.addresses) == set(m.addresses) - set(idle)
    assert owners <= set(after.addresses), "an owner must stay reachable"
    busy = [n for n in asked if n in owners]
    if busy:
        with pytest.raises(ValueError, match="still own slots"):
            m.without(busy)


@settings(max_examples=50, deadline=None)
@given(m=slot_maps())
def test_cleared_leaves_nothing_but_a_higher_epoch(m: SlotMap) -> None:
    snapshot = m.model_dump()
    after = m.cleared()
    one_epoch_on(m, snapshot, after)
    assert after.ranges == [] and after.moving == [] and after.addresses == {}


@settings(max_examples=100, deadline=None)
@given(m=slot_maps(), nodes=names)
def test_reassigned_applies_a_whole_plan_in_one_epoch(m: SlotMap, nodes: list[str]) -> None:
    snapshot = m.model_dump()
    after = m.reassigned(plan(m, nodes))
    one_epoch_on(m, snapshot, after)
    owners_ok(after)
    counts = after.counts()
    assert set(counts) == set(nodes)
    assert max(counts.values()) - min(counts.values()) <= 1
    assert after.addresses == m.addresses


@settings(max_examples=100, deadline=None)
@given(m=slot_maps(), data=st.data())
def test_a_move_is_marked_then_done(m: SlotMap, data: st.DataObject) -> None:
    mv = move_in(m, data)
    snapshot = m.model_dump()
    marked = m.marked_moving(mv)
    one_epoch_on(m, snapshot, marked)
    # While it moves, the source still owns the range and clients know where it goes.
    assert marked.ranges == m.ranges
    for slot in {mv.start, mv.end, (mv.start + mv.end) // 2}:
        moving = marked.moving_for(slot)
        assert moving is not None
        assert (moving.source, moving.target, moving.epoch) == (mv.source, mv.target, marked.epoch)

    other = move_in(marked, data)
    both = marked.marked_moving(other)
    snapshot = both.model_dump()
    done = both.moved(mv)
    one_epoch_on(both, snapshot, done)
    owners_ok(done)
    assert all(done.owner(s) == mv.target for s in range(mv.start, mv.end + 1))
    outside = [s for s in range(SLOTS) if not mv.start <= s <= mv.end]
    assert all(done.owner(s) == m.owner(s) for s in outside[:: max(1, len(outside) // 500)])
    # Only the finished range stops moving; the other one still moves.
    assert [(r.start, r.end) for r in done.moving] == (
        [(other.start, other.end)] if (other.start, other.end) != (mv.start, mv.end) else []
    )


@settings(max_examples=100, deadline=None)
@given(m=slot_maps(), data=st.data())
def test_handover_moves_exactly_what_the_source_owns(m: SlotMap, data: st.DataObject) -> None:
    source = data.draw(st.sampled_from(sorted(m.counts())))
    moves = m.handover(source, "heir")
    assert sum(mv.size for mv in moves) == m.counts()[source]
    assert all(mv.source == source and mv.target == "heir" for mv in moves)
    after = m.reassigned(moves)
    owners_ok(after)
    assert source not in after.counts()
    assert after.counts()["heir"] == m.counts()[source]
