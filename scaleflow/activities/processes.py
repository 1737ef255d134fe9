"""Finding, starting and stopping local server processes through /proc."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

# Popen objects of children this process spawned, so that they get reaped.
_children: dict[int, subprocess.Popen[bytes]] = {}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [p.decode(errors="replace") for p in raw.split(b"\0") if p]


def is_running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state letter follows the parenthesised command name.
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def find_listening(binary: str, host: str, port: int) -> int | None:
    """The pid of a running ``binary`` started with ``-l host -p port``, if any."""
    # A wrapper script shows as "sh wrapper ..." until it execs the server.
    names = {os.path.basename(binary), "memcached"}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        args = cmdline(int(entry.name))
        if not names.intersection(os.path.basename(a) for a in args[:2]):
            continue
        if _flag(args, "-p") == str(port) and _flag(args, "-l") in (host, None):
            pid = int(entry.name)
            if is_running(pid):
                return pid
    return None


def _flag(args: list[str], flag: str) -> str | None:
    for i, a in enumerate(args[:-1]):
        if a == flag:
            return args[i + 1]
    return None


def spawn(args: list[str], log_path: Path) -> int:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        # A new session: the node outlives the worker that started it.
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    _children[proc.pid] = proc
    return proc.pid


def reap(pid: int) -> None:
    proc = _children.pop(pid, None)
    if proc is not None:
        with contextlib.suppress(Exception):
            proc.wait(timeout=0.1)


def stop(pid: int, grace_s: float = 3.0) -> None:
    """Stop ``pid`` (TERM, then KILL); a process already gone is fine."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not is_running(pid):
            reap(pid)
            return
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    reap(pid)


def listens_on(pid: int, port: int) -> bool:
    """Whether ``pid`` itself holds a listening TCP socket on ``port``.

    A plain connect could reach another program that took the port meanwhile.
    """
    try:
        inodes = {os.readlink(f"/proc/{pid}/fd/{fd}")[8:-1] for fd in os.listdir(f"/proc/{pid}/fd")}
    except OSError:
        return False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port and inode in inodes:
                return True
    return False


def wait_listening(host: str, port: int, pid: int, timeout_s: float) -> bool:
    """True once ``pid`` listens on ``port``; False if it died or time ran out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if listens_on(pid, port):
            return True
        if not is_running(pid):
            reap(pid)
            return False
        time.sleep(0.005)
    return False
