"""Record the histories that tests/test_replay.py replays.

Run it when a released workflow changes on purpose (and version the change with
``workflow.patched``): ``.venv/bin/python -m tests.histories.record``.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import timedelta
from pathlib import Path

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from scaleflow.core.models import OperationKind
from scaleflow.worker import WORKFLOWS
from scaleflow.workflows import attributes
from tests.servers import temporal_test_server
from tests.workflows.fakes import FakeCloud
from tests.workflows.test_pool import settle, start_pool, submit

HERE = Path(__file__).parent


async def save(client: Client, workflow_id: str, name: str) -> None:
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    (HERE / f"{name}.json").write_text(history.to_json())


async def finish(env: WorkflowEnvironment, op: str) -> None:
    await env.sleep(timedelta(minutes=10))
    # Failed and cancelled runs are recorded too.
    with contextlib.suppress(Exception):
        await env.client.get_workflow_handle(op).result()


async def record(env: WorkflowEnvironment) -> None:
    fake = FakeCloud()
    queue = f"record-{uuid.uuid4()}"
    client = env.client
    async with Worker(client, task_queue=queue, workflows=WORKFLOWS, activities=fake.activities()):
        # A short drain deadline keeps the recorded drain to a few slices.
        pool: WorkflowHandle = await start_pool(
            client, queue, min_count=1, max_count=4, provider="no-op", drain_deadline_s=10
        )
        await settle(pool, client, 1)
        out = await submit(pool, OperationKind.SCALE_OUT)
        await finish(env, out)
        await save(client, out, "scale_out_success")

        fake.drain_forever = True
        drained = await submit(pool, OperationKind.SCALE_IN)
        await finish(env, drained)
        await save(client, drained, "scale_in_drain_deadline")
        fake.drain_forever = False

        fake.fail_ready = True
        failed = await submit(pool, OperationKind.SCALE_OUT)
        await finish(env, failed)
        await save(client, failed, "scale_out_compensated")
        fake.fail_ready = False

        fake.ready_delay_s = 2
        cancelled = await submit(pool, OperationKind.SCALE_OUT)
        while not fake.provisioned or fake.provisioned[-1] in fake.terminated:
            await asyncio.sleep(0.05)
        handle = client.get_workflow_handle(cancelled)
        await handle.cancel()
        while (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
            await asyncio.sleep(0.1)
        await save(client, cancelled, "scale_out_cancelled")
        fake.ready_delay_s = 0

        await settle(pool, client, 1)
        await save(client, pool.id, "pool")
        await pool.terminate("recorded")


async def main() -> None:
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=temporal_test_server(), data_converter=pydantic_data_converter
    )
    await env.client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=env.client.namespace,
            search_attributes={
                k.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD for k in attributes.ALL
            },
        )
    )
    try:
        await record(env)
    finally:
        await env.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
