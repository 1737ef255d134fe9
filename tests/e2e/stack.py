"""A real stack for end-to-end tests: dev server, API on a port, worker, memcached."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from scaleflow.activities import processes
from scaleflow.activities.providers.local import LocalProvider
from scaleflow.api.app import create_app
from scaleflow.core.settings import Settings
from scaleflow.worker import build_worker
from tests.polling import Backoff

ROOT = Path(__file__).resolve().parents[2]


def slow_memcached(tmp: Path, delay_s: float) -> str:
    """A memcached that takes ``delay_s`` to boot, like a VM that is slow to come up."""
    script = tmp / "slow-memcached"
    script.write_text(f'#!/bin/sh\nsleep {delay_s}\nexec memcached "$@"\n')
    script.chmod(0o755)
    return str(script)


def memcached_pids(state_dir: Path) -> set[int]:
    """memcached processes started for ``state_dir`` (their ``-P`` names it)."""
    marker = str(state_dir.resolve())
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        args = processes.cmdline(pid)
        ours = args and os.path.basename(args[0]) == "memcached" and marker in " ".join(args)
        if ours and processes.is_running(pid):
            pids.add(pid)
    return pids


@dataclass
class WorkerProcess:
    """A worker in its own process, so that a test can SIGKILL it."""

    settings: Settings
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    # More environment for the worker (test hooks, AWS and Nomad endpoints).
    extra_env: dict[str, str] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        s = self.settings
        env = dict(os.environ)
        env.update(
            SCALEFLOW_TEMPORAL_ADDRESS=s.temporal_address,
            SCALEFLOW_TASK_QUEUE=s.task_queue,
            SCALEFLOW_STATE_DIR=str(s.state_dir),
            SCALEFLOW_MEMCACHED_BIN=s.memcached_bin,
            SCALEFLOW_DRAIN_POLL_INTERVAL_S=str(s.drain_poll_interval_s),
            PYTHONPATH=str(ROOT),
        )
        env.update(self.extra_env)
        return env

    def start(self) -> None:
        self.log = self.settings.state_dir / f"worker-{uuid.uuid4().hex[:6]}.log"
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "scaleflow.worker"], env=self.env(), stdout=out, stderr=out
            )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Stack:
    settings: Settings
    client: Client
    http: httpx.AsyncClient
    pools: list[str] = field(default_factory=list)

    def pool_name(self) -> str:
        name = f"e2e-{uuid.uuid4().hex[:8]}"
        self.pools.append(name)
        return name

    async def put_policy(self, name: str, **fields: Any) -> httpx.Response:
        body = {"MinCount": 1, "MaxCount": 8, "Provider": "local", **fields}
        return await self.http.put(f"/v1/policy/{name}", json=body)

    async def pool(self, name: str) -> dict[str, Any]:
        resp = await self.http.get(f"/v1/pools/{name}")
        assert resp.status_code == 200, resp.text
        return resp.json()

    async def wait_pool(self, name: str, nodes: int, timeout_s: float = 60) -> dict[str, Any]:
        view: dict[str, Any] = {}
        wait = Backoff(timeout_s)
        while not wait.expired():
            view = await self.pool(name)
            ready = [n for n in view["nodes"] if n["state"] == "ready"]
            if not view["queue"] and len(view["nodes"]) == nodes == len(ready):
                return view
            await wait.sleep()
        raise AssertionError(f"pool {name} did not reach {nodes} ready nodes: {view}")

    async def wait_status(
        self, op_id: str, statuses: tuple[str, ...] = ("success",), timeout_s: float = 90
    ) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        wait = Backoff(timeout_s)
        while not wait.expired():
            resp = await self.http.get(f"/v1/scale/status/{op_id}")
            if resp.status_code == 200:
                doc = resp.json()
                if doc["Status"] in statuses:
                    return doc
                if doc["Status"] in ("success", "failed", "cancelled"):
                    raise AssertionError(f"operation ended {doc['Status']}: {doc}")
            await wait.sleep()
        raise AssertionError(f"operation {op_id} not in {statuses}: {doc}")

    async def wait_activity(self, op_id: str, activity_type: str, timeout_s: float = 60) -> None:
        """Until the operation's history shows ``activity_type`` scheduled."""
        handle = self.client.get_workflow_handle(op_id)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                async for ev in handle.fetch_history_events():
                    if (
                        ev.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
                        and ev.activity_task_scheduled_event_attributes.activity_type.name
                        == activity_type
                    ):
                        return
            except RPCError as exc:
                if exc.status != RPCStatusCode.NOT_FOUND:
                    raise  # a child that has not started yet is looked for again
            await asyncio.sleep(0.05)
        raise AssertionError(f"{activity_type} was never scheduled for {op_id}")


TEST_CLIENT_REFRESH_S = 0.2


def stack_settings(tmp: Path, client: Client, **over: Any) -> Settings:
    target = client.service_client.config.target_host
    defaults: dict[str, Any] = {
        "temporal_address": target,
        "task_queue": f"e2e-{uuid.uuid4().hex[:8]}",
        "state_dir": tmp / "state",
        "drain_poll_interval_s": 0.05,
        # The tests' pool clients re-read the map every 0.2 s (TEST_CLIENT_REFRESH_S):
        # migrations wait 0.4 s per step for them rather than 1 s.
        "client_refresh_s": TEST_CLIENT_REFRESH_S,
    }
    return Settings(**{**defaults, **over})


@contextlib.asynccontextmanager
async def running_api(settings: Settings, client: Client) -> AsyncIterator[httpx.AsyncClient]:
    port = processes.free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings, client),
            host="127.0.0.1",
            port=port,
            log_config=None,
            # A request still open at the end (a client's keep-alive, a slow query) must
            # not hold the test's teardown forever.
            timeout_graceful_shutdown=10,
            # Longer than any wait of a burst's queued requests: a keep-alive connection
            # the server closes just as the client reuses it is a ReadError, not a 5xx.
            timeout_keep_alive=120,
        )
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
        try:
            yield http
        finally:
            server.should_exit = True
            await task


@contextlib.asynccontextmanager
async def stack(settings: Settings, client: Client, *, worker: bool = True) -> AsyncIterator[Stack]:
    """API (always) and an in-process worker (unless ``worker`` is False)."""
    local = LocalProvider(settings)
    async with running_api(settings, client) as http:
        st = Stack(settings=settings, client=client, http=http)
        try:
            if worker:
                async with build_worker(client, settings):
                    yield st
                    await _retire_pools(st)
            else:
                yield st
        finally:
            local.stop_all()


async def _retire_pools(st: Stack) -> None:
    """Pool entity workflows outlive a test; end them so they stop polling."""
    for name in st.pools:
        with contextlib.suppress(Exception):
            await st.client.get_workflow_handle(f"pool/{name}").terminate("test finished")
