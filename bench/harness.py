"""What the benchmarks share: a fresh stack (dev server, in-process worker, API on a free
port, memcached through the local provider) and the statistics and tables they print."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    # The harness reuses the end-to-end tests' stack; `tests` lives at the repo root.
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from temporalio.client import Client  # noqa: E402
from temporalio.contrib.pydantic import pydantic_data_converter  # noqa: E402
from temporalio.testing import WorkflowEnvironment  # noqa: E402

from scaleflow.activities import processes  # noqa: E402
from scaleflow.activities.providers.local import LocalProvider  # noqa: E402
from scaleflow.core.settings import Settings  # noqa: E402
from scaleflow.devserver import DEV_SERVER_EXTRA_ARGS  # noqa: E402
from scaleflow.workflows import attributes  # noqa: E402
from tests.e2e.stack import Stack, WorkerProcess, stack, stack_settings  # noqa: E402
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


# ---- the parts in processes of their own, as deployed ---------------------------


@dataclass
class Part:
    """One part of the stack in a process of its own: ``python -m <args>``, its output
    in ``log``."""

    name: str
    args: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", *self.args], env=self.env, stdout=out, stderr=out
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was not started"
        return self.proc.pid

    def check(self) -> None:
        """Raise if the process has exited (its log's tail says why)."""
        if self.proc is not None and self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{tail}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def part_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The SCALEFLOW_* environment of the worker in tests/e2e/stack.py, plus ``extra``."""
    return {**WorkerProcess(settings).env(), **extra}


# The benchmark's own process, in ``ProcessStack.pids()``.
LOAD = "bench (load)"


@dataclass
class ProcessStack:
    """Dev server, scaleflow worker and API, each in its own process; the benchmark
    process only sends requests (``http``) and reads Temporal (``client``)."""

    settings: Settings
    client: Client
    http: httpx.AsyncClient
    parts: dict[str, Part]
    # The dev server's pid (a child of this process, started by the SDK).
    server_pid: int | None
    tmp: Path
    pools: list[str] = field(default_factory=list)

    def pool_name(self) -> str:
        name = f"bench-{os.urandom(4).hex()}"
        self.pools.append(name)
        return name

    async def put_policy(self, name: str, **fields: Any) -> httpx.Response:
        body = {"MinCount": 1, "MaxCount": 8, "Provider": "local", **fields}
        return await self.http.put(f"/v1/policy/{name}", json=body)

    def add_part(self, name: str, args: list[str], **extra_env: str) -> Part:
        """Start another process with the stack's environment (e.g. a second worker)."""
        part = Part(name, args, part_env(self.settings, **extra_env), self.tmp / f"{name}.log")
        part.start()
        self.parts[name] = part
        return part

    def pids(self) -> dict[str, int]:
        """Every process of the stack, this one included, by name."""
        found = {name: part.pid for name, part in self.parts.items()}
        if self.server_pid is not None:
            found["dev server"] = self.server_pid
        found[LOAD] = os.getpid()
        return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU time that ``pid`` has used so far (0 if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_pid(marker: str) -> int | None:
    """A child of this process whose command line contains ``marker``."""
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == me and marker in " ".join(processes.cmdline(int(entry.name))):
            return int(entry.name)
    return None


async def _wait_api(http: httpx.AsyncClient, api: Part, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        api.check()
        try:
            resp = await http.get("/v1/pools")
            if resp.status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the API did not answer within {timeout_s:g} s")
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def process_stack(*, max_connections: int = 100, **over: Any) -> AsyncIterator[ProcessStack]:
    """A fresh dev server; the scaleflow worker (``python -m scaleflow.worker``) and the
    API (``python -m scaleflow.cli api``) each in a process of their own, configured by
    SCALEFLOW_* variables; an HTTP client with room for ``max_connections`` requests at
    once. Each part's output goes to a log in the temporary directory."""
    with tempfile.TemporaryDirectory(prefix="scaleflow-bench-") as tmp_name:
        tmp = Path(tmp_name)
        async with dev_server() as env:
            settings = stack_settings(tmp, env.client, default_pool=False, **over)
            port = processes.free_port()
            api_env = part_env(
                settings,
                SCALEFLOW_API_HOST="127.0.0.1",
                SCALEFLOW_API_PORT=str(port),
                # No genisys computes to load at start-up.
                SCALEFLOW_COMPUTES_FILE=str(tmp / "no-computes.toml"),
            )
            parts = {
                "worker": Part(
                    "worker", ["scaleflow.worker"], part_env(settings), tmp / "worker.log"
                ),
                "api": Part("api", ["scaleflow.cli", "api"], api_env, tmp / "api.log"),
            }
            limits = httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            )
            try:
                for part in parts.values():
                    part.start()
                async with httpx.AsyncClient(
                    base_url=f"http://127.0.0.1:{port}", timeout=120, limits=limits
                ) as http:
                    await _wait_api(http, parts["api"])
                    yield ProcessStack(
                        settings=settings,
                        client=env.client,
                        http=http,
                        parts=parts,
                        server_pid=child_pid("start-dev"),
                        tmp=tmp,
                    )
            finally:
                for part in reversed(parts.values()):
                    part.stop()
                LocalProvider(settings).stop_all()


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
