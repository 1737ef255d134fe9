"""Client throughput and misses while a pool resizes under a steady load.

A reader does ``get_many`` of 100 random existing keys through the client library,
back to back. Its throughput in the seconds before a scale-out is the baseline; its
throughput while the scale-out (and its slot migration) runs is compared with it.
Every miss on a key that existed before is counted.

As deployed, the application, the API and the worker are three processes: the reader
runs in a process of its own, so that it shares no interpreter (and no GIL) with the
API serving the status polls, nor with the worker copying keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import random
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench.harness import dev_server
from scaleflow.activities.providers.local import LocalProvider
from scaleflow.client import PoolClient
from tests.e2e.slot_helpers import keyset, write_all
from tests.e2e.stack import Stack, WorkerProcess, stack, stack_settings

KEYS = 50_000
BASELINE_S = 4.0
ROUNDS = 5
TARGET_RATIO = 0.7


@dataclass
class Load:
    api: str
    pool: str
    values: dict[str, str]
    stop: Any  # a multiprocessing Event
    stamps: list[tuple[float, int]] = field(default_factory=list)
    misses: int = 0

    def run(self) -> None:
        client = PoolClient.from_api(self.api, self.pool, refresh_s=0.2)
        keys = list(self.values)
        rng = random.Random(1)
        while not self.stop.is_set():
            batch = rng.sample(keys, 100)
            got = client.get_many(batch)
            self.misses += sum(1 for k in batch if got.get(k, b"").decode() != self.values[k])
            # CLOCK_MONOTONIC is one clock for every process on the machine.
            self.stamps.append((time.monotonic(), len(batch)))
        client.close()


def read_until_stopped(
    api: str, pool: str, values: dict[str, str], stop: Any, out: Connection
) -> None:
    """The reader process: its stamps and misses go back through ``out``."""
    load = Load(api, pool, values, stop)
    load.run()
    out.send((load.stamps, load.misses))
    out.close()


def rate(stamps: list[tuple[float, int]], start: float, end: float) -> float:
    done = sum(n for t, n in stamps if start <= t < end)
    return done / (end - start)


@contextlib.asynccontextmanager
async def deployed_stack() -> AsyncIterator[Stack]:
    """The worker in its own process, as deployed: a copy must not share the
    client's interpreter (and its GIL)."""
    with tempfile.TemporaryDirectory(prefix="scaleflow-bench-") as tmp:
        async with dev_server() as env:
            settings = stack_settings(Path(tmp), env.client, default_pool=False)
            worker = WorkerProcess(settings)
            worker.start()
            try:
                async with stack(settings, env.client, worker=False) as st:
                    yield st
            finally:
                worker.stop()
                LocalProvider(settings).stop_all()


async def run() -> dict[str, float]:
    ratios, bases, durings, afters, misses = [], [], [], [], 0
    async with deployed_stack() as st:
        name = st.pool_name()
        api = str(st.http.base_url)
        await st.put_policy(name, MinCount=1)
        await st.wait_pool(name, 1)
        values = keyset(KEYS)
        await asyncio.to_thread(write_all, api, name, values)
        ctx = multiprocessing.get_context("spawn")
        stop = ctx.Event()
        receive, send = ctx.Pipe(duplex=False)
        reader = ctx.Process(target=read_until_stopped, args=(api, name, values, stop, send))
        reader.start()
        await asyncio.sleep(2.0)  # the reader's interpreter starts, then warms up
        windows = []
        for _ in range(ROUNDS):
            t0 = time.monotonic()
            await asyncio.sleep(BASELINE_S)
            t1 = time.monotonic()
            resp = await st.http.post(f"/v1/scale/out/{name}")
            await st.wait_status(resp.json()["ID"], timeout_s=180)
            t2 = time.monotonic()
            await asyncio.sleep(BASELINE_S)
            windows.append((t0, t1, t2, time.monotonic()))
            # Back to one node, unmeasured, for the next round.
            resp = await st.http.post(f"/v1/scale/in/{name}")
            await st.wait_status(resp.json()["ID"], timeout_s=180)
        stop.set()
        stamps, misses = await asyncio.to_thread(receive.recv)
        reader.join()
    for i, (t0, t1, t2, t3) in enumerate(windows):
        bases.append(rate(stamps, t0, t1))
        durings.append(rate(stamps, t1, t2))
        afters.append(rate(stamps, t2, t3))
        ratios.append(durings[-1] / bases[-1])
        print(
            f"  round {i + 1}: 1 -> 2 nodes in {t2 - t1:4.1f} s, keys/s "
            f"{bases[-1]:9,.0f} before, {durings[-1]:9,.0f} during, {afters[-1]:9,.0f} after "
            f"(2 nodes, no migration): during/before {ratios[-1]:.2f}, "
            f"during/after {durings[-1] / afters[-1]:.2f}"
        )
    ratio = statistics.median(ratios)
    met = ratio >= TARGET_RATIO and misses == 0
    print(f"resize under load: {KEYS:,} keys, reader doing get_many of 100 random keys")
    print(
        f"  misses on existing keys: {misses}; median throughput ratio {ratio:.2f} over "
        f"{ROUNDS} scale-outs (target >= {TARGET_RATIO} and 0 misses): "
        f"{'met' if met else 'NOT met'}"
    )
    print(
        f"  median keys/s: before {statistics.median(bases):,.0f}, during "
        f"{statistics.median(durings):,.0f}, after {statistics.median(afters):,.0f}"
    )
    return {"ratio": ratio, "misses": float(misses)}
