"""What the benchmarks share: a fresh stack (dev server, in-process worker, API on a free
port, memcached through the local provider) and the statistics and tables they print."""

from __future__ import annotations

import contextlib
import math
import statistics
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    # The harness reuses the end-to-end tests' stack; `tests` lives at the repo root.
    sys.path.insert(0, str(ROOT))

from temporalio.contrib.pydantic import pydantic_data_converter  # noqa: E402
from temporalio.testing import WorkflowEnvironment  # noqa: E402

from scaleflow.activities.providers.local import LocalProvider  # noqa: E402
from scaleflow.devserver import DEV_SERVER_EXTRA_ARGS  # noqa: E402
from scaleflow.workflows import attributes  # noqa: E402
from tests.e2e.stack import Stack, stack, stack_settings  # noqa: E402
from tests.servers import memcached, temporal_cli  # noqa: E402


@contextlib.asynccontextmanager
async def dev_server() -> AsyncIterator[WorkflowEnvironment]:
    """A fresh dev server from the installed binary (the SDK never downloads one)."""
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_cli(),
        data_converter=pydantic_data_converter,
        search_attributes=attributes.ALL,
        dev_server_log_level="error",
        dev_server_extra_args=DEV_SERVER_EXTRA_ARGS,
    )
    try:
        yield env
    finally:
        await env.shutdown()


@contextlib.asynccontextmanager
async def bench_stack(**over: Any) -> AsyncIterator[Stack]:
    """Dev server, worker and API in a temporary state dir; every memcached node it
    started is stopped and its record removed on the way out."""
    with tempfile.TemporaryDirectory(prefix="scaleflow-bench-") as tmp:
        async with dev_server() as env:
            settings = stack_settings(
                Path(tmp), env.client, memcached_bin=memcached(), default_pool=False, **over
            )
            local = LocalProvider(settings)
            try:
                async with stack(settings, env.client) as st:
                    yield st
            finally:
                local.stop_all()
                for rec in local.records():
                    (local.dir / f"{rec.node_id}.json").unlink(missing_ok=True)


def load() -> str:
    """The 1-, 5- and 15-minute load averages: other work on the machine skews figures."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


# ---- statistics ---------------------------------------------------------------


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def percentile(xs: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(xs)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Series:
    """One measured quantity, in seconds."""

    name: str
    samples: list[float]

    @property
    def median_ms(self) -> float:
        return median(self.samples) * 1000

    @property
    def p90_ms(self) -> float:
        return percentile(self.samples, 90) * 1000


def print_table(title: str, rows: Sequence[Series]) -> None:
    width = max(len(r.name) for r in rows)
    print(f"\n{title}")
    header = f"  {'':<{width}}  {'n':>4}  {'median':>10}  {'p90':>10}  {'min':>10}  {'max':>10}"
    print(header)
    print("  " + "-" * (len(header) - 2))
    for r in rows:
        ms = [x * 1000 for x in r.samples]
        print(
            f"  {r.name:<{width}}  {len(ms):>4}  {median(ms):>7.1f} ms  "
            f"{percentile(ms, 90):>7.1f} ms  {min(ms):>7.1f} ms  {max(ms):>7.1f} ms"
        )


def ratio_line(label: str, measured: Series, baseline: Series, target_ms: float) -> str:
    ratio = measured.median_ms / baseline.median_ms
    met = "met" if measured.median_ms <= target_ms else "NOT met"
    return (
        f"{label}: median {measured.median_ms:.1f} ms vs {baseline.name} "
        f"{baseline.median_ms:.1f} ms -> ratio {ratio:.2f}x "
        f"(target median <= {target_ms:.0f} ms: {met})"
    )
