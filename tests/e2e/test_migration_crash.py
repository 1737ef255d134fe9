"""A worker SIGKILLed in the middle of a slot migration: the next one resumes the
copy from the last heartbeat and no key is lost."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from scaleflow.core.migration_io import MigrationProgress
from scaleflow.core.slots import SlotMap
from tests.e2e.slot_helpers import missing, owned_once, strays, write_all
from tests.e2e.stack import Stack, WorkerProcess, memcached_pids, stack, stack_settings


@pytest.fixture
def workers() -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for w in started:
        w.stop()


async def copy_progress(st: Stack, workflow_id: str, timeout_s: float = 60) -> MigrationProgress:
    """The first heartbeat of the running copy that shows keys done."""
    handle = st.client.get_workflow_handle(workflow_id)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            desc = await handle.describe()
        except Exception:
            await asyncio.sleep(0.02)
            continue
        for pending in desc.raw_description.pending_activities:
            if pending.heartbeat_details.payloads:
                details = st.client.data_converter.payload_converter.from_payloads(
                    pending.heartbeat_details.payloads
                )
                progress = MigrationProgress.model_validate(details[0])
                if progress.keys > 0:
                    return progress
        await asyncio.sleep(0.02)
    raise AssertionError("the copy never reported progress")


async def test_worker_killed_mid_migration_resumes_from_heartbeat(
    dev_env: WorkflowEnvironment, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    settings = stack_settings(tmp_path, dev_env.client)
    async with stack(settings, dev_env.client, worker=False) as st:
        name = st.pool_name()
        api = str(st.http.base_url)
        first = WorkerProcess(settings)
        first.start()
        workers.append(first)
        await st.put_policy(name, MinCount=1)
        await st.wait_pool(name, 1)
        # Values big enough that the copy takes a while on two cores.
        values = {f"key:{i}": f"{i}:" + "x" * 400 for i in range(120_000)}
        await asyncio.to_thread(write_all, api, name, values)

        op = (await st.http.post(f"/v1/scale/out/{name}")).json()["ID"]
        progress = await copy_progress(st, f"{op}-migration-1")
        first.kill()
        second = WorkerProcess(settings)
        second.start()
        workers.append(second)
        doc = await st.wait_status(op, timeout_s=180)

        resumed = [e["Message"] for e in doc["Events"] if e["Message"].startswith("resumed")]
        assert len(resumed) == 1, doc["Events"]
        after = int(resumed[0].rsplit("after ", 1)[1].split(" ")[0].replace(",", ""))
        assert after >= progress.keys > 0, "the copy went on from its heartbeat, not from zero"

        view = await st.wait_pool(name, 2)
        final = SlotMap.model_validate((await st.http.get(f"/v1/pools/{name}/slots")).json())
        owned_once(final, {n["id"] for n in view["nodes"]})
        assert await asyncio.to_thread(missing, api, name, values) == []
        assert await asyncio.to_thread(strays, final) == {n: 0 for n in final.addresses}
        await st.client.get_workflow_handle(f"pool/{name}").terminate("test finished")
    assert memcached_pids(settings.state_dir) == set()
