"""The slot migration's copy and purge against real memcached nodes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from pymemcache.client.base import Client

from scaleflow.activities.memcached_wire import metadump
from scaleflow.activities.migration import copy_range, purge_range
from scaleflow.activities.providers.local import LocalProvider
from scaleflow.client.wire import MultiGet, split_address
from scaleflow.core.activity_io import ProvisionInput
from scaleflow.core.migration_io import MigrateInput, MigrationProgress, PurgeInput
from scaleflow.core.models import PoolConfig
from scaleflow.core.slots import SLOTS, Move, slot_of

HALF = SLOTS // 2
MOVE = Move(start=HALF, end=SLOTS - 1, source="a", target="b")
CONFIG = PoolConfig(name="copy")


@pytest.fixture
def nodes(provider: LocalProvider) -> Iterator[tuple[str, str]]:
    out = []
    for node_id in ("a", "b"):
        req = ProvisionInput(pool=CONFIG.name, node_id=node_id, config=CONFIG)
        out.append(provider.provision(req).node.address or "")
    yield out[0], out[1]


def writer(address: str) -> Client:
    return Client(split_address(address), default_noreply=False)


def items(address: str, keys: list[bytes]) -> dict[bytes, tuple[int, bytes]]:
    reader = MultiGet(address, timeout_s=5)
    try:
        reader.send(keys)
        return {k: (flags, v) for k, flags, v in reader.receive()}
    finally:
        reader.close()


def expiries(address: str) -> dict[bytes, int]:
    return dict(metadump(address))


def fill(address: str, n: int) -> tuple[list[bytes], list[bytes]]:
    """``n`` keys in each half, with their own flags; every third one expires."""
    low: list[bytes] = []
    high: list[bytes] = []
    i = 0
    client = writer(address)
    while len(low) < n or len(high) < n:
        key = f"key:{i}".encode()
        side = high if slot_of(key) >= HALF else low
        if len(side) < n:
            client.set(key, b"v%d" % i, expire=3600 if i % 3 == 0 else 0, flags=i % 7)
            side.append(key)
        i += 1
    client.close()
    return low, high


def beats() -> tuple[list[Any], Any]:
    seen: list[Any] = []
    return seen, lambda *details: seen.append(details)


def test_copy_keeps_flags_and_expiry_and_never_overwrites_a_newer_value(nodes) -> None:
    source, target = nodes
    low, high = fill(source, 60)
    writer(target).set(high[0], b"newer", flags=99)  # a client wrote it since the move began
    seen, heartbeat = beats()
    # Small batches: the next batch is requested while the last one is written.
    result = copy_range(
        MigrateInput(move=MOVE, source_address=source, target_address=target, batch=7),
        heartbeat,
    )
    assert result.keys == 60  # the newer key was offered too; add left it alone
    on_source, on_target = items(source, high), items(target, high)
    assert on_target[high[0]] == (99, b"newer")
    assert {k: on_target[k] for k in high[1:]} == {k: on_source[k] for k in high[1:]}
    assert not items(target, low), "keys of slots outside the move stay put"
    src_exp, dst_exp = expiries(source), expiries(target)
    assert any(src_exp[k] > 0 for k in high) and any(src_exp[k] == -1 for k in high)
    assert {k: dst_exp[k] for k in high[1:]} == {k: src_exp[k] for k in high[1:]}
    # One heartbeat per batch, each naming the last key copied.
    assert len(seen) == (60 + 6) // 7
    assert seen[-1][0]["keys"] == 60


def test_a_resumed_copy_starts_after_the_last_key_it_recorded(nodes) -> None:
    source, target = nodes
    _, high = fill(source, 30)
    ordered = sorted(high)
    resume = MigrationProgress(last_key=ordered[9].hex(), keys=10, bytes=30)
    _, heartbeat = beats()
    result = copy_range(
        MigrateInput(move=MOVE, source_address=source, target_address=target, batch=4),
        heartbeat,
        resume,
    )
    assert result.resumed_after == 10 and result.keys == 30
    assert set(items(target, high)) == set(ordered[10:])
    assert "resumed migration of slots" in result.events[0].message


def test_purge_removes_the_range_from_the_source_only(nodes) -> None:
    source, target = nodes
    low, high = fill(source, 40)
    copy_range(MigrateInput(move=MOVE, source_address=source, target_address=target), beats()[1])
    report = purge_range(PurgeInput(move=MOVE, address=source))
    assert f"removed {len(high)} keys" in report.events[0].message
    assert not items(source, high)
    assert set(items(source, low)) == set(low)
    assert set(items(target, high)) == set(high)


def test_keys_that_expired_since_the_dump_are_skipped(nodes) -> None:
    source, target = nodes
    client = writer(source)
    _, high = fill(source, 10)
    client.set(high[0], b"short", expire=1)
    time.sleep(2.1)
    result = copy_range(
        MigrateInput(move=MOVE, source_address=source, target_address=target), beats()[1]
    )
    client.close()
    assert result.keys == 9
    assert high[0] not in items(target, high)
