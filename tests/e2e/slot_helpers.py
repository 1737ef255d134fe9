"""Helpers for slot-partitioned pools in end-to-end tests."""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field

from scaleflow.activities.memcached_wire import metadump
from scaleflow.client import PoolClient
from scaleflow.core.slots import SLOTS, SlotMap, slot_of
from tests.e2e.stack import TEST_CLIENT_REFRESH_S


def keyset(n: int) -> dict[str, str]:
    return {f"key:{i}": f"value-{i}" for i in range(n)}


def write_all(api: str, pool: str, values: dict[str, str]) -> None:
    client = PoolClient.from_api(api, pool, refresh_s=TEST_CLIENT_REFRESH_S)
    try:
        items = list(values.items())
        for i in range(0, len(items), 1000):
            assert client.set_many(dict(items[i : i + 1000])) == []
    finally:
        client.close()


def missing(api: str, pool: str, values: dict[str, str]) -> list[str]:
    client = PoolClient.from_api(api, pool, refresh_s=TEST_CLIENT_REFRESH_S)
    try:
        keys = list(values)
        lost = []
        for i in range(0, len(keys), 1000):
            got = client.get_many(keys[i : i + 1000])
            lost += [k for k in keys[i : i + 1000] if got.get(k, b"").decode() != values[k]]
        return lost
    finally:
        client.close()


@dataclass
class Reader:
    """Reads random keys through the client library until stopped; counts misses."""

    api: str
    pool: str
    values: dict[str, str]
    reads: int = 0
    misses: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        client = PoolClient.from_api(self.api, self.pool, refresh_s=TEST_CLIENT_REFRESH_S)
        keys = list(self.values)
        rng = random.Random(7)
        try:
            while not self.stop.is_set():
                batch = rng.sample(keys, 200)
                try:
                    got = client.get_many(batch)
                except Exception as exc:  # recorded, and the test fails on it
                    self.errors.append(repr(exc))
                    continue
                self.reads += len(batch)
                self.misses += [k for k in batch if got.get(k, b"").decode() != self.values[k]]
        finally:
            client.close()

    def __enter__(self) -> Reader:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


def owned_once(m: SlotMap, live: set[str]) -> None:
    seen = [0] * SLOTS
    for r in m.ranges:
        assert r.node in live, f"slot range {r.label()} owned by a node that is gone"
        seen[r.start : r.end + 1] = [c + 1 for c in seen[r.start : r.end + 1]]
    assert seen == [1] * SLOTS, "every slot owned by exactly one node"
    assert m.moving == []


def strays(m: SlotMap) -> dict[str, int]:
    """Keys each node holds for slots it does not own."""
    owners = m.table()
    out = {}
    for node, address in m.addresses.items():
        out[node] = sum(1 for k, _ in metadump(address) if owners[slot_of(k)] != node)
    return out
