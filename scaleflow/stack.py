"""``scaleflow dev``: the whole embedded stack in one process tree.

Ctrl-C stops the API, the worker, the dev server and the local provider's memcached
nodes. Node records stay in ``var/nodes``, and the next start brings each node back
on its port, so pools keep their members across restarts (cache contents do not
survive: memcached keeps nothing on disk).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from temporalio.client import Client

from scaleflow.activities.providers.local import LocalProvider
from scaleflow.api.app import create_app
from scaleflow.api.temporal import upsert_pool
from scaleflow.core.models import Engine, PoolConfig, PoolInit, ProviderName
from scaleflow.core.settings import Settings
from scaleflow.devserver import start_dev_server
from scaleflow.temporal import connect
from scaleflow.worker import build_worker
from scaleflow.workflows.pool import PoolWorkflow

log = logging.getLogger(__name__)


def default_pool(settings: Settings) -> PoolConfig:
    return PoolConfig(
        name=settings.default_pool_name,
        engine=Engine.MEMCACHED,
        provider=ProviderName.LOCAL,
        min_count=1,
        max_count=8,
    )


async def ensure_default_pool(client: Client, settings: Settings) -> None:
    """Create the default pool if it does not exist; never overwrite a user's changes."""
    init = PoolInit(config=default_pool(settings))
    view = await upsert_pool(client, settings, init, PoolWorkflow.ensure)
    log.info("pool %s: %d nodes", view.name, len(view.nodes))


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


async def run_dev(settings: Settings) -> None:
    with state_lock(settings):
        await _run_dev(settings)


async def _run_dev(settings: Settings) -> None:
    local = LocalProvider(settings)
    revived = await asyncio.to_thread(local.revive_all)
    if revived:
        log.info("restarted %d recorded memcached nodes", len(revived))
    server = start_dev_server(settings)
    try:
        client = await connect(settings, attempts=240, delay_s=0.25)
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
        async with build_worker(client, settings):
            if settings.default_pool:
                await ensure_default_pool(client, settings)
            log.info("API at http://%s:%d", settings.api_host, settings.api_port)
            await api.serve()
    finally:
        stopped = await asyncio.to_thread(local.stop_all)
        log.info("stopped %d memcached nodes (records kept in %s)", len(stopped), local.dir)
        stop_process(server)
