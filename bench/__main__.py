"""``python -m bench [scale_out] [status_list]``: run the benchmarks (all by default)."""

from __future__ import annotations

import asyncio
import os
import platform
import sys
import time
from collections.abc import Awaitable, Callable

import temporalio

from bench import scale_out, status_list
from bench.harness import Series, load

BENCHMARKS: dict[str, Callable[[], Awaitable[dict[str, Series]]]] = {
    "scale_out": scale_out.run,
    "status_list": status_list.run,
}
TARGETS = {"scale-out": scale_out.TARGET_MS, "status list": status_list.TARGET_MS}


async def main(names: list[str]) -> None:
    print(
        f"scaleflow benchmarks, {time.strftime('%Y-%m-%d %H:%M:%S %Z')}: "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, "
        f"temporalio {temporalio.__version__}, load average {load()}"
    )
    results: dict[str, Series] = {}
    for name in names:
        started = time.perf_counter()
        results.update(await BENCHMARKS[name]())
        print(f"({name} took {time.perf_counter() - started:.0f} s; load average {load()})\n")

    print("=" * 78)
    print("summary")
    print("=" * 78)
    for label, target in TARGETS.items():
        if label not in results:
            continue
        got, base = results[label], results[f"{label} baseline"]
        verdict = "met" if got.median_ms <= target else "NOT met"
        print(
            f"  {label:<12} median {got.median_ms:>7.1f} ms  p90 {got.p90_ms:>7.1f} ms  "
            f"baseline {base.median_ms:>7.1f} ms  ratio {got.median_ms / base.median_ms:>6.2f}x  "
            f"target <= {target:.0f} ms: {verdict}"
        )


if __name__ == "__main__":
    chosen = sys.argv[1:] or list(BENCHMARKS)
    unknown = [n for n in chosen if n not in BENCHMARKS]
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    asyncio.run(main(chosen))
