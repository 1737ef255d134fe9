"""``python -m bench [name ...]``: run the benchmarks under bench/ (all by default)."""

from __future__ import annotations

import asyncio
import importlib
import os
import platform
import sys
import time

import temporalio

from bench.harness import Series, load

# Modules under bench/, run in this order; each has ``async def run() -> dict``.
BENCHMARKS = [
    "scale_out",
    "status_list",
    "migration",
    "resize_load",
    "autoscaler_day",
    "policy_autoscaler_day",
    "throughput",
    "broker_migration",
]
# The latency targets: (label, measured series, baseline series, target ms).
TARGETS = [
    ("scale-out 0->1, to node answering", "scale-out", "scale-out baseline", 250.0),
    ("scale-out 1->2, to node answering", "scale-out 1->2 answering", "scale-out baseline", 250.0),
    ("scale-out 1->2, to status success", "scale-out 1->2 success", "scale-out baseline", 250.0),
    ("GET /v1/scale/status, 1000 closed", "status list", "status list baseline", 100.0),
    ("24 h of autoscaling (time-skipping)", "autoscaler day", "autoscaler day floor", 10_000.0),
]


def summary(results: dict[str, Series]) -> None:
    print("=" * 78)
    print("summary")
    print("=" * 78)
    for label, key, base_key, target in TARGETS:
        if key not in results:
            continue
        got, base = results[key], results[base_key]
        verdict = "met" if got.median_ms <= target else "NOT met"
        print(
            f"  {label:<34} median {got.median_ms:>8.1f} ms  p90 {got.p90_ms:>8.1f} ms  "
            f"ratio {got.median_ms / base.median_ms:>7.2f}x  <= {target:.0f} ms: {verdict}"
        )


async def main(names: list[str]) -> None:
    print(
        f"scaleflow benchmarks, {time.strftime('%Y-%m-%d %H:%M:%S %Z')}: "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, "
        f"temporalio {temporalio.__version__}, load average {load()}"
    )
    results: dict[str, Series] = {}
    for name in names:
        started = time.perf_counter()
        module = importlib.import_module(f"bench.{name}")
        got = await module.run()
        results.update({k: v for k, v in got.items() if isinstance(v, Series)})
        print(f"({name} took {time.perf_counter() - started:.0f} s; load average {load()})\n")
    summary(results)


if __name__ == "__main__":
    chosen = sys.argv[1:] or BENCHMARKS
    unknown = [n for n in chosen if n not in BENCHMARKS]
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {unknown}; choose from {BENCHMARKS}")
    asyncio.run(main(chosen))
    sys.stdout.flush()
    # After a time-skipping server, the SDK's core threads can abort the interpreter's
    # shutdown (PyGILState_Release); every figure is printed by now.
    os._exit(0)
