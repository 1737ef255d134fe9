"""``scaleflow scale out --wait`` on a real terminal (a tmux pane): the status line and
the slots bar redraw in place while the operation runs, and the events scroll above.
Provisioning is held by a gated memcached, so the running state is seen without timing."""

from __future__ import annotations

import asyncio
import re
import shlex
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from tests.cli.helpers import CLI, cli_env, gated_memcached
from tests.e2e.slot_helpers import keyset, write_all
from tests.e2e.stack import stack, stack_settings


class Pane:
    """One detached tmux session on a private server socket."""

    def __init__(self, tmp: Path) -> None:
        tmux = shutil.which("tmux")
        assert tmux, "tmux is installed by `make test` (scripts/install-system-deps.sh)"
        self.base = [tmux, "-L", f"scaleflow-{uuid.uuid4().hex[:8]}", "-f", "/dev/null"]
        self.rc = tmp / "rc"

    def start(self, argv: list[str], env: dict[str, str]) -> None:
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items() if k != "COLUMNS")
        line = f"env -i {exports} TERM=xterm-256color {shlex.join(argv)}; echo $? > {self.rc}"
        self.tmux("new-session", "-d", "-x", "160", "-y", "48", "sh", "-c", line + "; sleep 600")

    def tmux(self, *args: str) -> str:
        return subprocess.run(
            [*self.base, *args], capture_output=True, text=True, check=True, timeout=10
        ).stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-J")

    def stop(self) -> None:
        subprocess.run([*self.base, "kill-server"], capture_output=True, check=False)


@pytest.fixture
def pane(tmp_path: Path) -> Iterator[Pane]:
    p = Pane(tmp_path)
    try:
        yield p
    finally:
        p.stop()


async def wait_screen(pane: Pane, seen: Callable[[str], bool], what: str) -> str:
    deadline = time.monotonic() + 120
    screen = ""
    while time.monotonic() < deadline:
        screen = await asyncio.to_thread(pane.screen)
        if seen(screen):
            return screen
        await asyncio.sleep(0.1)
    raise AssertionError(f"the pane never showed {what}:\n{screen}")


async def test_the_live_view_redraws_in_place(
    dev_env: WorkflowEnvironment, tmp_path: Path, pane: Pane
) -> None:
    memcached_bin, armed, gate = gated_memcached(tmp_path)
    settings = stack_settings(tmp_path, dev_env.client, memcached_bin=memcached_bin)
    async with stack(settings, dev_env.client) as st:
        name = st.pool_name()
        api = str(st.http.base_url)
        await st.put_policy(name, MinCount=1)
        await st.wait_pool(name, 1)
        await asyncio.to_thread(write_all, api, name, keyset(2000))
        armed.touch()  # the new node waits for the gate
        try:
            pane.start([*CLI, "scale", "out", name, "--wait"], cli_env(api))
            running = await wait_screen(
                pane, lambda s: f"scale-out of pool {name}: in progress" in s, "the running line"
            )
            op_id = re.search(r"operation ([0-9a-f-]{36})", running)
            assert op_id, running
            # A spinner and a clock on the status line while it runs; no bar yet.
            assert re.search(rf"scale-out of pool {name}: in progress \d+:\d\d:\d\d", running)
            assert "keys moved" not in running
        finally:
            gate.touch()
        done = await wait_screen(pane, lambda s: pane.rc.exists(), "the end")
        done = await asyncio.to_thread(pane.screen)
        assert pane.rc.read_text().strip() == "0", done
        # Redrawn in place: one status line and one bar, however many times it refreshed.
        status_lines = re.findall(rf"scale-out of pool {name}: (?!operation)", done)
        assert len(status_lines) == 1, done
        assert f"✓ scale-out of pool {name}: success" in done, done
        assert len(re.findall(r"slots .*8192/8192 [\d,]+ keys moved", done)) == 1, done
        # The events above it, each once, the final one included.
        doc = (await st.http.get(f"/v1/scale/status/{op_id.group(1)}")).json()
        for event in doc["Events"]:
            assert done.count(event["Message"]) == 1, (event["Message"], done)
        await st.wait_pool(name, 2)
