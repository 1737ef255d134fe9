"""DataClearWorkflow on the time-skipping server with the real activities: real memcached,
moto's S3 server and the machine's PostgreSQL. It runs on its own (no parent pool)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from scaleflow.activities.data_clear import (
    RDS_NOT_CONFIGURED,
    S3_NOT_CONFIGURED,
    DataClearActivities,
)
from scaleflow.core.events import MSG_FAILURE, MSG_STARTED, MSG_SUCCESS, build_scaling_event
from scaleflow.core.models import (
    CONTROL_SOURCE,
    DataClearSpec,
    Node,
    NodeState,
    OperationInput,
    OperationKind,
    OperationResult,
    PoolConfig,
    PoolSnapshot,
    ScalingEvent,
)
from scaleflow.core.settings import Settings
from scaleflow.workflows.data_clear import DataClearWorkflow
from tests.activities.test_data_clear import (
    PG_DSN,
    POOL,
    cached,
    fill,
    made_pg_tables,
    object_count,
    running_cache_nodes,
)
from tests.aws_fixtures import AWS_REGION


@asynccontextmanager
async def worker(env: WorkflowEnvironment, settings: Settings) -> AsyncIterator[str]:
    """A worker with the real data-clear activities, registered under their names."""
    acts = DataClearActivities(settings)
    queue = f"q-{uuid.uuid4()}"
    with ThreadPoolExecutor(max_workers=8) as pool:
        async with Worker(
            env.client,
            task_queue=queue,
            workflows=[DataClearWorkflow],
            activities=[acts.flush_cache, acts.empty_bucket, acts.truncate_tables],
            activity_executor=pool,
        ):
            yield queue


async def start(
    client: Client, queue: str, nodes: list[Node], clear: DataClearSpec | None
) -> WorkflowHandle[Any, OperationResult]:
    op_id = f"clear-{uuid.uuid4().hex[:8]}"
    inp = OperationInput(
        op_id=op_id,
        pool=POOL,
        kind=OperationKind.DATA_CLEAR,
        count=1,
        config=PoolConfig(name=POOL),
        clear=clear,
    )
    # The "go" signal stands in for the pool giving the operation its turn. The handle
    # from start_workflow (not one got by id) lets the server skip time while it waits.
    return await client.start_workflow(
        DataClearWorkflow.run,
        inp,
        id=op_id,
        task_queue=queue,
        start_signal="go",
        start_signal_args=[PoolSnapshot(nodes=nodes)],
    )


async def document(client: Client, handle: WorkflowHandle[Any, Any]) -> ScalingEvent:
    history = await handle.fetch_history()
    return build_scaling_event(history.events, client.data_converter.payload_converter)


def lines(doc: ScalingEvent) -> list[tuple[str, str]]:
    """The document's (message, source) lines in order, its started line first.

    Activity lines carry the worker's wall-clock time and the others the server's; once
    the time-skipping server has skipped, its clock runs far ahead, so its started line
    would sort after the activity lines (never so on a real server).
    """
    items = [(e.message, e.source) for e in doc.events]
    started = [i for i in items if i[0] == MSG_STARTED]
    assert started == [(MSG_STARTED, CONTROL_SOURCE)]
    return [started[0], *[i for i in items if i[0] != MSG_STARTED]]


async def activity_names(handle: WorkflowHandle[Any, Any]) -> list[str]:
    history = await handle.fetch_history()
    return [
        ev.activity_task_scheduled_event_attributes.activity_type.name
        for ev in history.events
        if ev.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]


def idle(node_id: str, state: NodeState, address: str | None) -> Node:
    return Node(id=node_id, address=address, state=state, created_at=datetime.now(UTC))


@pytest.fixture
def s3(moto_url: str) -> Any:
    return boto3.client("s3", endpoint_url=moto_url, region_name=AWS_REGION)


def with_stores(settings: Settings, moto_url: str, bucket: str, tables: list[str]) -> Settings:
    """``settings`` with S3 on moto's server and RDS on the machine's PostgreSQL."""
    return settings.model_copy(
        update={
            "aws_endpoint_url": moto_url,
            "aws_region": AWS_REGION,
            "s3_bucket": bucket,
            "rds_dsn": PG_DSN,
            "rds_tables": tables,
        }
    )


@pytest.fixture
def make_bucket(s3: Any) -> Callable[[int], str]:
    def make(objects: int) -> str:
        bucket = f"clear-{uuid.uuid4().hex[:8]}"
        s3.create_bucket(Bucket=bucket)
        for i in range(objects):
            s3.put_object(Bucket=bucket, Key=f"images/{i}.png", Body=b"x")
        return bucket

    return make


async def test_data_clear_empties_cache_s3_and_rds_end_to_end(
    time_env: WorkflowEnvironment,
    settings: Settings,
    memcached_bin: str,
    moto_url: str,
    s3: Any,
    make_bucket: Callable[[int], str],
) -> None:
    bucket = make_bucket(3)
    with running_cache_nodes(settings) as nodes, made_pg_tables() as tables:
        fill(nodes[0], 7)
        fill(nodes[1], 5)
        # A node still starting (no address) and a terminated one are not flushed.
        stopped = nodes[1].model_copy(update={"id": "gone", "state": NodeState.TERMINATED})
        snapshot = [*nodes, idle("new", NodeState.PROVISIONING, None), stopped]
        configured = with_stores(settings, moto_url, bucket, tables.names)
        async with worker(time_env, configured) as queue:
            handle = await start(time_env.client, queue, snapshot, DataClearSpec(s3=True, rds=True))
            assert await handle.result() == OperationResult()
            doc = await document(time_env.client, handle)

        assert lines(doc) == [
            (MSG_STARTED, CONTROL_SOURCE),
            ("flushed 2 cache nodes (12 items before)", "memcached"),
            (f"removed 3 objects from s3://{bucket}", "s3"),
            (f"removed 10 rows from tables {', '.join(tables.names)}", "rds"),
            (MSG_SUCCESS, CONTROL_SOURCE),
        ]
        assert doc.status == "success"
        # Really gone: the cache, the bucket's objects and the rows (a fresh connection).
        assert cached(nodes[0], 7) == {} and cached(nodes[1], 5) == {}
        assert object_count(s3, bucket) == 0
        assert tables.counts() == [0, 0, 0, 0]


async def test_data_clear_says_when_s3_and_rds_are_not_configured(
    time_env: WorkflowEnvironment, settings: Settings
) -> None:
    async with worker(time_env, settings) as queue:
        handle = await start(time_env.client, queue, [], DataClearSpec(s3=True, rds=True))
        await handle.result()
        doc = await document(time_env.client, handle)
    assert [m for m, _ in lines(doc)] == [
        MSG_STARTED,
        "no cache nodes to flush",
        S3_NOT_CONFIGURED,
        RDS_NOT_CONFIGURED,
        MSG_SUCCESS,
    ]


async def test_data_clear_of_the_cache_only_leaves_s3_and_rds_alone(
    time_env: WorkflowEnvironment,
    settings: Settings,
    memcached_bin: str,
    moto_url: str,
    s3: Any,
    make_bucket: Callable[[int], str],
) -> None:
    bucket = make_bucket(2)
    with running_cache_nodes(settings, count=1) as nodes, made_pg_tables() as tables:
        fill(nodes[0], 4)
        configured = with_stores(settings, moto_url, bucket, tables.names)
        async with worker(time_env, configured) as queue:
            handle = await start(time_env.client, queue, nodes, None)
            await handle.result()
            doc = await document(time_env.client, handle)
            names = await activity_names(handle)
        assert names == ["flush_cache"]
        assert [m for m, _ in lines(doc)] == [
            MSG_STARTED,
            "flushed 1 cache node (4 items before)",
            MSG_SUCCESS,
        ]
        assert cached(nodes[0], 4) == {}
        assert object_count(s3, bucket) == 2
        assert tables.counts() == [3, 4, 2, 1]


async def test_data_clear_fails_on_a_missing_bucket_and_stops_there(
    time_env: WorkflowEnvironment, settings: Settings, moto_url: str
) -> None:
    configured = with_stores(settings, moto_url, "no-such-bucket", ["public.anything"])
    async with worker(time_env, configured) as queue:
        handle = await start(time_env.client, queue, [], DataClearSpec(s3=True, rds=True))
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        doc = await document(time_env.client, handle)
        names = await activity_names(handle)
    # Not retried (the bucket will not appear by itself), and RDS is never touched.
    assert names == ["flush_cache", "empty_bucket"]
    messages = lines(doc)
    assert messages[:3] == [
        (MSG_STARTED, CONTROL_SOURCE),
        ("no cache nodes to flush", "memcached"),
        ("S3 bucket 'no-such-bucket' does not exist (SCALEFLOW_S3_BUCKET)", "s3"),
    ]
    assert messages[-1] == (MSG_FAILURE, CONTROL_SOURCE)
    assert doc.status == "failed"
