"""Real traffic through the client library drives the autoscaler: misses grow the
pool, hits shrink it again."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from temporalio.testing import WorkflowEnvironment

from scaleflow.client import PoolClient
from scaleflow.core.autoscale import AutoscalerConfig
from scaleflow.workflows.pool import PoolWorkflow
from tests.e2e.stack import TEST_CLIENT_REFRESH_S, stack, stack_settings


class Traffic:
    """Reads through the client library until stopped: absent keys or present ones."""

    def __init__(self, api: str, pool: str, hits: bool) -> None:
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(api, pool, hits), daemon=True)

    def _run(self, api: str, pool: str, hits: bool) -> None:
        client = PoolClient.from_api(api, pool, refresh_s=TEST_CLIENT_REFRESH_S)
        keys = [f"hot:{i}" for i in range(200)]
        if hits:
            client.set_many(dict.fromkeys(keys, "v"))
        n = 0
        while not self.stop.is_set():
            n += 1
            client.get_many(keys if hits else [f"cold:{n}:{i}" for i in range(50)])
            time.sleep(0.01)
        client.close()

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


async def test_misses_grow_the_pool_and_hits_shrink_it(
    dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    settings = stack_settings(tmp_path, dev_env.client)
    async with stack(settings, dev_env.client) as st:
        name = st.pool_name()
        api = str(st.http.base_url)
        await st.put_policy(name, MinCount=1, MaxCount=3)
        await st.wait_pool(name, 1)
        cfg = AutoscalerConfig(
            auto_mode=True, interval_s=2, expand_ratio=2, shrink_ratio=0.5, skip_identical=False
        )
        handle = st.client.get_workflow_handle(f"pool/{name}")
        with Traffic(api, name, hits=False):
            await handle.execute_update(PoolWorkflow.set_autoscaler, cfg)
            await st.wait_pool(name, 2, timeout_s=90)
        with Traffic(api, name, hits=True):
            await st.wait_pool(name, 1, timeout_s=90)
        await handle.execute_update(
            PoolWorkflow.set_autoscaler, cfg.model_copy(update={"auto_mode": False})
        )

        listing = (await st.http.get("/v1/scale/status", params={"pool": name})).json()
        reasons = [
            e["Message"]
            for doc in listing.values()
            for e in doc["Events"]
            if e["Source"] == "autoscaler"
        ]
        assert any("> max 0.6" in r for r in reasons), reasons
        assert any("< min 0.4" in r for r in reasons), reasons
