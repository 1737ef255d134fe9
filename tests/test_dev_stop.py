"""``scaleflow dev`` stops cleanly on SIGTERM, whether it is sent to the process or to
its whole process group (what stopping ``make run`` does): within 10 s, with no
memcached node and no Temporal dev server left behind."""

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

from scaleflow.activities import processes
from tests.e2e.stack import ROOT, memcached_pids

STOP_WITHIN_S = 10.0
START_WITHIN_S = 90.0


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
    }
    log = tmp_path / "dev.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "scaleflow.cli", "dev"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    stack = DevStack(proc, state, f"http://127.0.0.1:{api_port}", log)
    try:
        yield stack
    finally:
        # Whatever the test found, leave nothing running behind it.
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for pid in memcached_pids(state) | dev_server_pids(state):
            processes.stop(pid, grace_s=1)


def assert_nothing_left(stack: DevStack) -> None:
    assert memcached_pids(stack.state_dir) == set(), stack.output()
    assert dev_server_pids(stack.state_dir) == set(), stack.output()


def test_sigterm_to_the_process_stops_everything(dev_stack: DevStack) -> None:
    dev_stack.wait_ready(nodes=1)
    assert dev_server_pids(dev_stack.state_dir), "the dev server should be running"
    dev_stack.proc.send_signal(signal.SIGTERM)
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
