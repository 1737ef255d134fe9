"""Slots: CRC16 key hashing as Redis Cluster does it, slot maps, and move plans.

A map gives every one of the 16384 slots to exactly one node, as contiguous ranges.
Plans move the fewest slots: a new node takes ranges trimmed from the ends of the
others, and a leaving node's ranges are spread over the rest.
"""

from __future__ import annotations

import binascii
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel, Field

SLOTS = 16384


def crc16(data: bytes) -> int:
    """CRC16-CCITT (XModem), the variant Redis Cluster uses; binascii's is in C."""
    return binascii.crc_hqx(data, 0)


def hash_part(key: bytes) -> bytes:
    """The part of the key that is hashed: a non-empty ``{tag}`` if there is one."""
    start = key.find(b"{")
    if start != -1:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


def slot_of(key: str | bytes) -> int:
    raw = key.encode() if isinstance(key, str) else key
    return crc16(hash_part(raw)) % SLOTS


class SlotRange(BaseModel):
    start: int = Field(ge=0, lt=SLOTS)
    end: int = Field(ge=0, lt=SLOTS)
    node: str

    @property
    def size(self) -> int:
        return self.end - self.start + 1

    def label(self) -> str:
        return f"{self.start}-{self.end}"


class Move(BaseModel):
    start: int
    end: int
    source: str
    target: str

    @property
    def size(self) -> int:
        return self.end - self.start + 1

    def label(self) -> str:
        return f"{self.start}-{self.end}"


class MovingRange(Move):
    epoch: int


class SlotMap(BaseModel):
    epoch: int = 0
    ranges: list[SlotRange] = Field(default_factory=list)
    moving: list[MovingRange] = Field(default_factory=list)
    # node id -> address, so a client can route with the map alone.
    addresses: dict[str, str] = Field(default_factory=dict)

    def owner(self, slot: int) -> str | None:
        for r in self.ranges:
            if r.start <= slot <= r.end:
                return r.node
        return None

    def moving_for(self, slot: int) -> MovingRange | None:
        for m in self.moving:
            if m.start <= slot <= m.end:
                return m
        return None

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.ranges:
            out[r.node] = out.get(r.node, 0) + r.size
        return out

    def owned(self, node: str) -> list[tuple[int, int]]:
        return [(r.start, r.end) for r in self.ranges if r.node == node]

    def table(self) -> list[str]:
        """Owner of each slot, for lookups in O(1)."""
        owners = [""] * SLOTS
        for r in self.ranges:
            owners[r.start : r.end + 1] = [r.node] * r.size
        return owners

    def idle(self, nodes: Iterable[str]) -> list[str]:
        """Those of ``nodes`` that the map still addresses although they own no slot."""
        owners = {r.node for r in self.ranges}
        return [n for n in nodes if n in self.addresses and n not in owners]

    def knows(self, addresses: dict[str, str]) -> bool:
        """Whether every one of these nodes is in the map at this address already."""
        return {**self.addresses, **addresses} == self.addresses

    def handover(self, source: str, target: str) -> list[Move]:
        """Moves that give every range ``source`` owns to ``target``."""
        return [Move(start=a, end=b, source=source, target=target) for a, b in self.owned(source)]

    # Edits: each returns a new map one epoch on, so clients and workflows that hold
    # an older map can tell it is stale. None of them mutates ``self``.

    def _next(self, **update: Any) -> SlotMap:
        return self.model_copy(update={"epoch": self.epoch + 1, **update})

    def with_addresses(self, addresses: dict[str, str]) -> SlotMap:
        """These nodes' addresses added (or changed); no slot changes owner."""
        return self._next(addresses={**self.addresses, **addresses})

    def joined(self, addresses: dict[str, str]) -> SlotMap:
        """The map with these nodes as members. A map without slots gives all of them to
        the nodes, in order; otherwise only their addresses are added (slots move later,
        by a plan)."""
        if not self.ranges:
            return initial_map(list(addresses), addresses, epoch=self.epoch + 1)
        return self.with_addresses(addresses)

    def without(self, nodes: Iterable[str]) -> SlotMap:
        """These nodes' addresses dropped, so that clients let go of them."""
        gone = set(nodes)
        owning = gone & {r.node for r in self.ranges}
        if owning:
            raise ValueError(f"nodes still own slots: {sorted(owning)}")
        return self._next(addresses={k: v for k, v in self.addresses.items() if k not in gone})

    def cleared(self) -> SlotMap:
        """No slot, move or node left: the pool's last node is leaving with its keys."""
        return SlotMap(epoch=self.epoch + 1)

    def reassigned(self, moves: Iterable[Move]) -> SlotMap:
        """Each move's slots given to its target at once, with no copy (no keys to copy)."""
        changed = self
        for mv in moves:
            changed = changed.model_copy(update={"ranges": apply_move(changed, mv)})
        return changed._next()

    def marked_moving(self, move: Move) -> SlotMap:
        """``move``'s range marked moving: clients write to its target and read the
        target first, then the source, while its keys are copied."""
        epoch = self.epoch + 1
        moving = MovingRange(
            start=move.start, end=move.end, source=move.source, target=move.target, epoch=epoch
        )
        return self._next(moving=[*self.moving, moving])

    def moved(self, move: Move) -> SlotMap:
        """``move`` done: its target owns its slots, and its range no longer moves."""
        still = [m for m in self.moving if (m.start, m.end) != (move.start, move.end)]
        return self._next(ranges=apply_move(self, move), moving=still)


def merge(ranges: Iterable[SlotRange]) -> list[SlotRange]:
    out: list[SlotRange] = []
    for r in sorted(ranges, key=lambda r: r.start):
        if out and out[-1].node == r.node and out[-1].end + 1 == r.start:
            out[-1] = out[-1].model_copy(update={"end": r.end})
        else:
            out.append(r)
    return out


def targets(nodes: Sequence[str], current: dict[str, int]) -> dict[str, int]:
    """Even shares; the odd slots go to the nodes that already hold the most."""
    if not nodes:
        return {}
    base, extra = divmod(SLOTS, len(nodes))
    ranked = sorted(nodes, key=lambda n: (-current.get(n, 0), nodes.index(n)))
    return {n: base + (1 if i < extra else 0) for i, n in enumerate(ranked)}


def initial_map(nodes: Sequence[str], addresses: dict[str, str], epoch: int = 1) -> SlotMap:
    """Each node one contiguous range; the first ``16384 % n`` nodes get one extra."""
    ranges = []
    start = 0
    base, extra = divmod(SLOTS, len(nodes))
    for i, node in enumerate(nodes):
        size = base + (1 if i < extra else 0)
        ranges.append(SlotRange(start=start, end=start + size - 1, node=node))
        start += size
    return SlotMap(epoch=epoch, ranges=ranges, addresses=dict(addresses))


def plan(current: SlotMap, nodes: Sequence[str]) -> list[Move]:
    """Moves that take ``current`` to even shares over ``nodes``, moving the fewest slots.

    Nodes that are not in ``nodes`` give up everything; surplus is trimmed from the
    end of each giver's holdings and handed to takers in node order.
    """
    have = current.counts()
    want = targets(nodes, have)
    surplus: list[SlotRange] = []
    for node in sorted(have, key=lambda n: (n not in want, n)):
        excess = have[node] - want.get(node, 0)
        for r in sorted((r for r in current.ranges if r.node == node), key=lambda r: -r.start):
            if excess <= 0:
                break
            take = min(excess, r.size)
            surplus.append(SlotRange(start=r.end - take + 1, end=r.end, node=node))
            excess -= take
    surplus.sort(key=lambda r: r.start)
    moves: list[Move] = []
    takers = [(n, want[n] - have.get(n, 0)) for n in nodes if want[n] > have.get(n, 0)]
    for target, need in takers:
        while need > 0 and surplus:
            r = surplus.pop(0)
            take = min(need, r.size)
            moves.append(Move(start=r.start, end=r.start + take - 1, source=r.node, target=target))
            if take < r.size:
                surplus.insert(0, r.model_copy(update={"start": r.start + take}))
            need -= take
    return moves


def apply_move(current: SlotMap, move: Move) -> list[SlotRange]:
    """The ranges after ``move``'s slots changed owner."""
    out: list[SlotRange] = []
    for r in current.ranges:
        if r.end < move.start or r.start > move.end:
            out.append(r)
            continue
        if r.start < move.start:
            out.append(r.model_copy(update={"end": move.start - 1}))
        if r.end > move.end:
            out.append(r.model_copy(update={"start": move.end + 1}))
    out.append(SlotRange(start=move.start, end=move.end, node=move.target))
    return merge(out)
