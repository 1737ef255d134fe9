"""``scaleflow dev``: the whole embedded stack in one process tree.

Ctrl-C or SIGTERM (to the process or its whole group) stops the API, the worker, the
dev server, the local provider's memcached nodes and the broker's local redis proxies.
Records stay in ``var/nodes`` and ``var/redis-proxies``, and the next start brings each
node back on its port, so pools and clusters keep their members across restarts (cache
contents do not survive: memcached and these redis-servers keep nothing on disk).
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import fcntl
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn
from temporalio.client import Client
from temporalio.worker import Worker

from scaleflow.activities.providers.local import LocalProvider
from scaleflow.activities.redis_proxies import LocalProxies
from scaleflow.api.app import create_app
from scaleflow.api.auth import check_bind
from scaleflow.api.routes.broker import Broker
from scaleflow.api.temporal import upsert_pool
from scaleflow.core.models import Engine, PoolConfig, PoolInit, ProviderName
from scaleflow.core.settings import Settings
from scaleflow.devserver import dev_server_args, dev_server_host_port, dev_server_ports
from scaleflow.temporal import connect
from scaleflow.worker import build_worker
from scaleflow.workflows.broker import BrokerWorkflow
from scaleflow.workflows.broker.models import ProvisionProxiesRequest
from scaleflow.workflows.pool import PoolWorkflow

log = logging.getLogger(__name__)
# How long a stop waits for the worker to hand back its tasks.
WORKER_STOP_S = 5.0
# How long a start waits for the dev server to answer (while it keeps running).
DEV_SERVER_START_S = 60.0


def default_pool(settings: Settings) -> PoolConfig:
    return settings.new_pool(settings.default_pool_name).model_copy(
        update={
            "engine": Engine.MEMCACHED,
            "provider": ProviderName.LOCAL,
            "min_count": 1,
            "max_count": 8,
        }
    )


async def ensure_default_pool(client: Client, settings: Settings) -> None:
    """Create the default pool if it does not exist; never overwrite a user's changes."""
    init = PoolInit(config=default_pool(settings))
    view = await upsert_pool(client, settings, init, PoolWorkflow.ensure)
    log.info("pool %s: %d nodes", view.name, len(view.nodes))


def default_proxy_hosts(settings: Settings) -> dict[str, int]:
    """Host -> how many of the default free proxies it runs: 127.0.0.2 onwards, spread
    evenly, the first hosts taking one more when they do not divide."""
    hosts = [f"127.0.0.{2 + i}" for i in range(settings.broker_proxy_hosts)]
    each, extra = divmod(settings.broker_free_proxies, len(hosts))
    return {h: each + (i < extra) for i, h in enumerate(hosts) if each + (i < extra)}


async def ensure_default_proxies(client: Client, settings: Settings) -> None:
    """Start and register the broker's default free proxies that are missing, host by host;
    proxies already registered on a host (free or in a cluster) count."""
    broker = Broker(client=client, settings=settings, name=settings.broker_name)
    meta = await broker.meta()
    have: dict[str, int] = {}
    for proxy in meta.all_proxies.values():
        have[proxy.host] = have.get(proxy.host, 0) + 1
    missing: dict[int, list[str]] = {}
    for host, want in default_proxy_hosts(settings).items():
        if want > have.get(host, 0):
            missing.setdefault(want - have.get(host, 0), []).append(host)
    for per_host, hosts in sorted(missing.items()):
        req = ProvisionProxiesRequest(hosts=hosts, per_host=per_host)
        reply = await broker.update(BrokerWorkflow.provision_proxies, req)
        log.info("broker %s: started free proxies %s", broker.name, ", ".join(reply.proxies))


def stop_process(proc: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def state_lock(settings: Settings) -> Iterator[None]:
    """One embedded stack per state dir: a second would fight over its nodes and ports."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    with (settings.state_dir / "dev.lock").open("w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit(
                f"scaleflow: another `scaleflow dev` is using {settings.state_dir}; stop it first"
            ) from None
        yield


def listen_ports(settings: Settings) -> list[tuple[str, str, int, str]]:
    """Every port the stack listens on: (what, host, port, the setting that moves it)."""
    ports = [
        *dev_server_ports(settings),
        ("the API", settings.api_host, settings.api_port, "SCALEFLOW_API_PORT"),
    ]
    if settings.worker_metrics_port:
        ports.append(
            (
                "the worker's metrics",
                settings.worker_metrics_host,
                settings.worker_metrics_port,
                "SCALEFLOW_WORKER_METRICS_PORT",
            )
        )
    return ports


def cannot_listen(host: str, port: int) -> OSError | None:
    """Why nothing could listen on ``host:port`` now (in use, say); None if it could.

    SO_REUSEADDR as the servers themselves set it, so that a port a stopped stack left
    in TIME_WAIT counts as free, and one something listens on does not.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return exc
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            return exc
    return None


def check_ports(settings: Settings) -> None:
    """Stop at once, naming the port, if the stack could not listen on one of its ports,
    rather than start half of it and wait for a server that cannot come up."""
    seen: dict[int, str] = {}
    for what, host, port, setting in listen_ports(settings):
        if port in seen:
            raise SystemExit(
                f"scaleflow: port {port} is configured for both {seen[port]} and {what} "
                f"({setting}); give each its own port"
            )
        seen[port] = what
        error = cannot_listen(host, port)
        if error is not None and getattr(error, "errno", None) == errno.EADDRINUSE:
            raise SystemExit(
                f"scaleflow: port {port} on {host} ({what}) is already in use: stop what "
                f"listens there, or move {what} to another port with {setting}"
            )
        if error is not None:
            raise SystemExit(
                f"scaleflow: cannot listen on {host}:{port} (port {port}, {what}): {error}; "
                f"check {setting}"
            )


async def run_dev(settings: Settings) -> None:
    check_bind(settings)  # before the dev server or any node starts
    with state_lock(settings):
        # Inside the lock: a second `scaleflow dev` on this state dir is told so instead.
        check_ports(settings)
        await _run_dev(settings)


def _log_tail(path: Path, offset: int, lines: int = 8) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            text = fh.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join("  " + line[:400] for line in text.strip().splitlines()[-lines:])


async def wait_for_dev_server(
    settings: Settings, server: subprocess.Popen[bytes], log_offset: int = 0
) -> Client:
    """Connect to the dev server just started; stop at once if it exits meanwhile (a port
    taken after all, a database it cannot open), naming its ports and its last words."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEV_SERVER_START_S
    host, port = dev_server_host_port(settings)
    log_path = settings.state_dir / "temporal.log"
    while True:
        if server.poll() is not None:
            tail = _log_tail(log_path, log_offset)
            raise SystemExit(
                f"scaleflow: the Temporal dev server exited (code {server.returncode}) before "
                f"it answered on {host}:{port} (port {port}; UI port "
                f"{settings.temporal_ui_port}). From {log_path}:\n{tail or '  (nothing)'}"
            )
        try:
            return await connect(settings)
        except RuntimeError as exc:
            if loop.time() >= deadline:
                raise SystemExit(
                    f"scaleflow: the Temporal dev server did not answer on {host}:{port} "
                    f"(port {port}) within {DEV_SERVER_START_S:g}s: {exc}; see {log_path}"
                ) from None
        await asyncio.sleep(0.25)


def start_own_dev_server(settings: Settings) -> subprocess.Popen[bytes]:
    """The dev server, out of this process group but never outliving this process.

    A signal to the group (what stopping ``make run`` sends) would otherwise stop the
    server at once, and the worker could not hand back its tasks. The stack stops it
    itself, last; if the stack is killed outright, the kernel stops it (Linux).
    """
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    with (settings.state_dir / "temporal.log").open("ab") as out:
        return subprocess.Popen(
            dev_server_args(settings),
            stdout=out,
            stderr=out,
            start_new_session=True,
            preexec_fn=_die_with_parent if _LIBC is not None else None,
        )


# Loaded before any fork: the child may only make the one call.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    assert _LIBC is not None
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Shutdown:
    """Ctrl-C and SIGTERM both stop the stack in order: API, worker, nodes, dev server.

    Python's default for SIGTERM ends the process at once, skipping every ``finally``,
    so the memcached nodes (in sessions of their own) outlived it. uvicorn catches both
    signals while it serves and raises them again once it has stopped; this handler is
    the one they then reach, so the clean-up runs instead of a bare exit.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.main = asyncio.current_task()
        self.api: uvicorn.Server | None = None
        self.requested = False

    def install(self) -> None:
        for sig in self.SIGNALS:
            asyncio.get_running_loop().add_signal_handler(sig, self.request)

    def request(self) -> None:
        if self.api is not None:
            self.api.should_exit = True  # serving: let uvicorn stop in order
        elif not self.requested and self.main is not None:
            self.main.cancel()  # still starting: unwind into the clean-up, once
        self.requested = True

    def uninstall(self) -> None:
        for sig in self.SIGNALS:
            asyncio.get_running_loop().remove_signal_handler(sig)


async def stop_worker(worker: Worker, server: subprocess.Popen[bytes]) -> bool:
    """Stop the worker within ``WORKER_STOP_S``; False if it is still stopping.

    A graceful stop hands the last tasks back to the server; with the server gone it
    would retry those calls for far longer than a stop may take.
    """
    stopping = asyncio.create_task(worker.__aexit__(None, None, None))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WORKER_STOP_S
    while not stopping.done() and server.poll() is None and loop.time() < deadline:
        await asyncio.wait({stopping}, timeout=0.1)
    if not stopping.done():
        return False
    if not stopping.cancelled() and stopping.exception() is not None:
        log.warning("the worker stopped with an error: %r", stopping.exception())
    return True


async def _run_dev(settings: Settings) -> None:
    shutdown = Shutdown()
    shutdown.install()
    local = LocalProvider(settings)
    proxies = LocalProxies(settings)
    server: subprocess.Popen[bytes] | None = None
    worker: Worker | None = None
    stopped_worker = True
    try:
        # In the loop's thread on purpose: a signal meanwhile is handled once it is
        # done, so no node can start after the clean-up below has stopped them all.
        revived = local.revive_all()
        if revived:
            log.info("restarted %d recorded memcached nodes", len(revived))
        revived = proxies.revive_all()
        if revived:
            log.info("restarted %d recorded redis proxies", len(revived))
        log_path = settings.state_dir / "temporal.log"
        log_offset = log_path.stat().st_size if log_path.exists() else 0
        server = start_own_dev_server(settings)
        client = await wait_for_dev_server(settings, server, log_offset)
        log.info(
            "temporal dev server at %s, UI at http://127.0.0.1:%d",
            settings.temporal_address,
            settings.temporal_ui_port,
        )
        api = uvicorn.Server(
            uvicorn.Config(
                create_app(settings, client),
                host=settings.api_host,
                port=settings.api_port,
                log_config=None,
            )
        )
        starting = build_worker(client, settings)
        await starting.__aenter__()
        worker = starting
        if settings.default_pool:
            await ensure_default_pool(client, settings)
        if settings.broker_free_proxies:
            await ensure_default_proxies(client, settings)
        log.info("API at http://%s:%d", settings.api_host, settings.api_port)
        shutdown.api = api
        if not shutdown.requested:
            await api.serve()
    except (asyncio.CancelledError, Exception) as exc:
        if not shutdown.requested:
            raise
        # The cancel may surface as the SDK's own error (an update cut short, say).
        log.info("stopped while starting (%s)", type(exc).__name__)
    finally:
        # Runs to the end: a second signal only asks for what is already under way.
        if worker is not None and server is not None:
            stopped_worker = await stop_worker(worker, server)
        stopped = local.stop_all()
        log.info("stopped %d memcached nodes (records kept in %s)", len(stopped), local.dir)
        stopped = proxies.stop_all()
        log.info("stopped %d redis-server processes of local proxies", len(stopped))
        if server is not None:
            stop_process(server)
        shutdown.uninstall()
    if not stopped_worker:
        # Its leftover tasks would hold up the interpreter's exit for as long as they
        # keep retrying a server that is gone; everything else has been stopped.
        log.warning("the worker did not stop within %gs; exiting without it", WORKER_STOP_S)
        logging.shutdown()
        os._exit(0)
