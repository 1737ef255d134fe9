"""Migration throughput between two local memcached nodes.

scaleflow's copy (``copy_range``: crawler dump, slot filter, sorted batches of
``get_many`` + pipelined ``add`` with each key's flags and expiry) against a raw
pipelined ``get_many``/``set_many`` copy of the same keys, measured in the same run.
"""

from __future__ import annotations

import statistics
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

from pymemcache.client.base import Client

from scaleflow.activities.migration import copy_range
from scaleflow.activities.processes import free_port, wait_listening
from scaleflow.core.migration_io import MigrateInput
from scaleflow.core.slots import SLOTS, Move

KEYS = 100_000
VALUE = b"v" * 1024
ROUNDS = 3
TARGET_RATIO = 0.8
TARGET_GB_PER_MIN = 1.0


@contextmanager
def node(memory_mb: int = 512) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            "memcached",
            "-l",
            "127.0.0.1",
            "-p",
            str(port),
            "-U",
            "0",
            "-m",
            str(memory_mb),
            "-u",
            "root",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_listening("127.0.0.1", port, proc.pid, 5)
        yield f"127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()


class Raw:
    """Values as (bytes, flags), so the baseline copies flags as the migration does."""

    def serialize(self, key: bytes, value: tuple[bytes, int]) -> tuple[bytes, int]:
        return value

    def deserialize(self, key: bytes, value: bytes, flags: int) -> tuple[bytes, int]:
        return value, flags


def client(address: str) -> Client:
    host, _, port = address.rpartition(":")
    return Client((host, int(port)), serde=Raw(), timeout=30)


def fill(address: str) -> list[str]:
    keys = [f"bench:{i}" for i in range(KEYS)]
    c = client(address)
    for i in range(0, KEYS, 1000):
        c.set_many({k: (VALUE, 0) for k in keys[i : i + 1000]}, expire=3600)
    c.close()
    return keys


def flush(address: str) -> None:
    c = client(address)
    c.flush_all()
    c.close()


def raw_copy(source: str, target: str, keys: list[str]) -> float:
    src, dst = client(source), client(target)
    started = time.perf_counter()
    for i in range(0, len(keys), 500):
        got = src.get_many(keys[i : i + 500])
        dst.set_many(got, noreply=True)
    dst.version()  # every noreply write processed
    elapsed = time.perf_counter() - started
    src.close()
    dst.close()
    return elapsed


def scaleflow_copy(source: str, target: str) -> float:
    req = MigrateInput(
        move=Move(start=0, end=SLOTS - 1, source="a", target="b"),
        source_address=source,
        target_address=target,
    )
    started = time.perf_counter()
    result = copy_range(req, lambda *a: None)
    elapsed = time.perf_counter() - started
    assert result.keys == KEYS, result.keys
    return elapsed


def measure() -> dict[str, float]:
    raw, ours = [], []
    with node() as source, node() as target:
        keys = fill(source)
        for _ in range(ROUNDS):
            flush(target)
            raw.append(raw_copy(source, target, keys))
            flush(target)
            ours.append(scaleflow_copy(source, target))
    mb = KEYS * len(VALUE) / 1e6
    r, o = statistics.median(raw), statistics.median(ours)
    return {"raw_s": r, "ours_s": o, "mb": mb, "ratio": r / o, "gb_per_min": mb / 1000 / o * 60}


async def run() -> dict[str, float]:
    import asyncio

    figures = await asyncio.to_thread(measure)
    print(f"migration copy of {KEYS:,} keys x 1 KiB ({figures['mb']:.0f} MB), median of {ROUNDS}:")
    print(f"  raw get_many/set_many : {figures['raw_s'] * 1000:8.0f} ms")
    print(f"  scaleflow copy_range  : {figures['ours_s'] * 1000:8.0f} ms")
    met = figures["ratio"] >= TARGET_RATIO and figures["gb_per_min"] >= TARGET_GB_PER_MIN
    print(
        f"  throughput ratio {figures['ratio']:.2f} of raw (target >= {TARGET_RATIO}), "
        f"{figures['gb_per_min']:.2f} GB/min (target >= {TARGET_GB_PER_MIN}): "
        f"{'met' if met else 'NOT met'}"
    )
    return figures
