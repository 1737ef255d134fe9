"""``scaleflow dev`` stops cleanly on SIGTERM, whether it is sent to the process or to
its whole process group (what stopping ``make run`` does): within 10 s, with no
memcached node, no redis-server of a local proxy and no Temporal dev server left behind.
A second start brings the broker's default free proxies back on their addresses."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from scaleflow.activities import processes
from tests.e2e.stack import ROOT, memcached_pids

STOP_WITHIN_S = 10.0
START_WITHIN_S = 90.0
# Default free proxies of the broker: 2 on 2 hosts keeps the test light.
PROXIES = 2


def redis_pids(state_dir: Path) -> set[int]:
    """redis-server processes whose config lives in ``state_dir`` (local proxies)."""
    marker = str(state_dir.resolve())
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            args = processes.cmdline(int(entry.name))
            # redis-server's process title: "redis-server host:port [cluster] <config>"
            ours = args and args[0].startswith("redis-server")
            if ours and marker in " ".join(args) and processes.is_running(int(entry.name)):
                pids.add(int(entry.name))
    return pids


def dev_server_pids(state_dir: Path) -> set[int]:
    """Temporal dev servers whose database lives in ``state_dir``."""
    marker = str(state_dir / "temporal.db")
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            args = processes.cmdline(int(entry.name))
            if "start-dev" in args and marker in args and processes.is_running(int(entry.name)):
                pids.add(int(entry.name))
    return pids


@dataclass
class DevStack:
    proc: subprocess.Popen[bytes]
    state_dir: Path
    api: str
    log: Path
    env: dict[str, str]

    def restart(self) -> None:
        """Start ``scaleflow dev`` again on the same state dir, after a stop."""
        assert self.proc.poll() is not None
        self.proc = spawn(self.env, self.log)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def wait_ready(self, nodes: int) -> None:
        """Until the API answers and the default pool has ``nodes`` running memcached."""
        deadline = time.monotonic() + START_WITHIN_S
        seen = ""
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"scaleflow dev exited early:\n{self.output()}"
            try:
                resp = httpx.get(f"{self.api}/v1/pools/default", timeout=5)
                seen = resp.text
                if resp.status_code == 200:
                    ready = [n for n in resp.json()["nodes"] if n["state"] == "ready"]
                    if len(ready) == nodes and len(memcached_pids(self.state_dir)) == nodes:
                        return
            except httpx.HTTPError as exc:
                seen = repr(exc)
            time.sleep(0.2)
        raise AssertionError(f"the default pool never had {nodes} nodes: {seen}\n{self.output()}")

    def proxies(self) -> list[str]:
        """The broker's proxies, once each has its two redis-server processes running."""
        resp = httpx.get(f"{self.api}/api/v2/proxies/addresses", timeout=5)
        assert resp.status_code == 200, resp.text
        addresses = sorted(resp.json()["addresses"])
        assert len(addresses) == PROXIES, addresses
        assert len(redis_pids(self.state_dir)) == 2 * PROXIES, self.output()
        for address in addresses:
            host, port = address.split(":")
            with redis.Redis(host=host, port=int(port), socket_timeout=5) as node:
                assert node.ping()
        return addresses

    def stop_within(self, seconds: float) -> float:
        """Seconds until the process exited; fails if it takes longer than ``seconds``."""
        started = time.monotonic()
        try:
            self.proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"scaleflow dev still running {seconds:g}s after SIGTERM:\n{self.output()}"
            ) from None
        return time.monotonic() - started


def spawn(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "scaleflow.cli", "dev"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@pytest.fixture
def dev_stack(tmp_path: Path) -> Iterator[DevStack]:
    """``scaleflow dev`` in a session (and process group) of its own, on free ports."""
    state = tmp_path / "state"
    api_port = processes.free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SCALEFLOW_STATE_DIR": str(state),
        "SCALEFLOW_API_PORT": str(api_port),
        "SCALEFLOW_TEMPORAL_ADDRESS": f"127.0.0.1:{processes.free_port()}",
        "SCALEFLOW_TEMPORAL_UI_PORT": str(processes.free_port()),
        "SCALEFLOW_COMPUTES_FILE": str(tmp_path / "no-computes.toml"),
        "SCALEFLOW_BROKER_FREE_PROXIES": str(PROXIES),
        "SCALEFLOW_BROKER_PROXY_HOSTS": "2",
    }
    log = tmp_path / "dev.log"
    stack = DevStack(spawn(env, log), state, f"http://127.0.0.1:{api_port}", log, env)
    try:
        yield stack
    finally:
        # Whatever the test found, leave nothing running behind it.
        proc = stack.proc
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for pid in memcached_pids(state) | dev_server_pids(state) | redis_pids(state):
            processes.stop(pid, grace_s=1)


def assert_nothing_left(stack: DevStack) -> None:
    assert memcached_pids(stack.state_dir) == set(), stack.output()
    assert dev_server_pids(stack.state_dir) == set(), stack.output()
    assert redis_pids(stack.state_dir) == set(), stack.output()


def test_sigterm_to_the_process_stops_everything(dev_stack: DevStack) -> None:
    dev_stack.wait_ready(nodes=1)
    assert dev_server_pids(dev_stack.state_dir), "the dev server should be running"
    hosts = {a.split(":")[0] for a in dev_stack.proxies()}
    assert hosts == {"127.0.0.2", "127.0.0.3"}
    dev_stack.proc.send_signal(signal.SIGTERM)
    dev_stack.stop_within(STOP_WITHIN_S)
    assert_nothing_left(dev_stack)


def test_a_second_start_brings_the_same_proxies_back(dev_stack: DevStack) -> None:
    dev_stack.wait_ready(nodes=1)
    first = dev_stack.proxies()
    dev_stack.proc.send_signal(signal.SIGTERM)
    dev_stack.stop_within(STOP_WITHIN_S)
    assert_nothing_left(dev_stack)
    dev_stack.restart()
    dev_stack.wait_ready(nodes=1)
    # Neither new proxies nor new ports: the recorded ones, running again.
    assert dev_stack.proxies() == first
    os.killpg(dev_stack.proc.pid, signal.SIGTERM)
    dev_stack.stop_within(STOP_WITHIN_S)
    assert_nothing_left(dev_stack)


def test_sigterm_to_the_process_group_stops_everything(dev_stack: DevStack) -> None:
    dev_stack.wait_ready(nodes=1)
    # A second node, so that more than the one the pool started with must be stopped.
    resp = httpx.post(f"{dev_stack.api}/v1/scale/out/default", timeout=30)
    assert resp.status_code == 201, resp.text
    dev_stack.wait_ready(nodes=2)
    os.killpg(dev_stack.proc.pid, signal.SIGTERM)
    dev_stack.stop_within(STOP_WITHIN_S)
    assert_nothing_left(dev_stack)


def test_sigterm_while_starting_stops_everything(dev_stack: DevStack) -> None:
    # As soon as the first node runs, well before the API serves.
    deadline = time.monotonic() + START_WITHIN_S
    while not memcached_pids(dev_stack.state_dir) and not dev_server_pids(dev_stack.state_dir):
        assert time.monotonic() < deadline, dev_stack.output()
        assert dev_stack.proc.poll() is None, dev_stack.output()
        time.sleep(0.02)
    os.killpg(dev_stack.proc.pid, signal.SIGTERM)
    dev_stack.stop_within(STOP_WITHIN_S)
    assert_nothing_left(dev_stack)


def test_sigkill_takes_the_dev_server_with_it(dev_stack: DevStack) -> None:
    # The dev server sits outside the process group (so a group SIGTERM cannot stop it
    # before the worker): it must still never outlive the stack.
    dev_stack.wait_ready(nodes=1)
    dev_stack.proc.send_signal(signal.SIGKILL)
    dev_stack.proc.wait()
    deadline = time.monotonic() + STOP_WITHIN_S
    while dev_server_pids(dev_stack.state_dir) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert dev_server_pids(dev_stack.state_dir) == set()
