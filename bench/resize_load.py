"""Client throughput and misses while a pool resizes under a steady load.

A reader thread does ``get_many`` of 100 random existing keys through the client
library, back to back. Its throughput in the seconds before a scale-out is the
baseline; its throughput while the scale-out (and its slot migration) runs is
compared with it. Every miss on a key that existed before is counted.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from dataclasses import dataclass, field

from bench.harness import bench_stack
from scaleflow.client import PoolClient
from tests.e2e.slot_helpers import keyset, write_all

KEYS = 50_000
BASELINE_S = 6.0
TARGET_RATIO = 0.7


@dataclass
class Load:
    api: str
    pool: str
    values: dict[str, str]
    stop: threading.Event = field(default_factory=threading.Event)
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
            self.stamps.append((time.monotonic(), len(batch)))
        client.close()

    def rate(self, start: float, end: float) -> float:
        done = sum(n for t, n in self.stamps if start <= t < end)
        return done / (end - start)


async def run() -> dict[str, float]:
    async with bench_stack() as st:
        name = st.pool_name()
        api = str(st.http.base_url)
        await st.put_policy(name, MinCount=1)
        await st.wait_pool(name, 1)
        values = keyset(KEYS)
        await asyncio.to_thread(write_all, api, name, values)
        load = Load(api, name, values)
        thread = threading.Thread(target=load.run, daemon=True)
        thread.start()
        await asyncio.sleep(1.0)  # warm-up
        t0 = time.monotonic()
        await asyncio.sleep(BASELINE_S)
        t1 = time.monotonic()
        resp = await st.http.post(f"/v1/scale/out/{name}")
        doc = await st.wait_status(resp.json()["ID"], timeout_s=180)
        t2 = time.monotonic()
        load.stop.set()
        thread.join()
    base, during = load.rate(t0, t1), load.rate(t1, t2)
    moved = [e["Message"] for e in doc["Events"] if e["Message"].startswith("migrated")]
    print(f"resize under load: {KEYS:,} keys, reader doing get_many of 100 random keys")
    print(f"  baseline ({BASELINE_S:.0f} s before)   : {base:10,.0f} keys/s")
    print(f"  during scale-out ({t2 - t1:4.1f} s)   : {during:10,.0f} keys/s")
    print(f"  {'; '.join(moved)}")
    ratio = during / base
    met = ratio >= TARGET_RATIO and load.misses == 0
    print(
        f"  misses on existing keys: {load.misses}; throughput ratio {ratio:.2f} "
        f"(target >= {TARGET_RATIO} and 0 misses): {'met' if met else 'NOT met'}"
    )
    return {"ratio": ratio, "misses": float(load.misses), "base": base, "during": during}
