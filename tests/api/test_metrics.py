"""``GET /metrics`` (the API's figures) and the worker's SDK metrics, both scraped and
parsed as Prometheus would, against a real stack."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from scaleflow.activities import processes
from scaleflow.api.metrics import moved_by
from scaleflow.core.autoscale import StatsSample
from scaleflow.core.models import pool_workflow_id
from scaleflow.workflows import attributes
from scaleflow.workflows.pool import PoolWorkflow
from tests.e2e.slot_helpers import keyset, write_all
from tests.e2e.stack import Stack, WorkerProcess, stack_settings


def parse(text: str) -> dict[str, list[Sample]]:
    """Samples by family name, as Prometheus' own parser reads them."""
    return {f.name: list(f.samples) for f in text_string_to_metric_families(text)}


def value(families: dict[str, list[Sample]], sample: str, **labels: str) -> float | None:
    """The one sample named ``sample`` whose labels include ``labels``; None if absent."""
    family = sample
    for suffix in ("_total", "_count", "_sum", "_bucket"):
        if family.endswith(suffix) and family.removesuffix(suffix) in families:
            family = family.removesuffix(suffix)
    found = [
        s.value
        for s in families.get(family, [])
        if s.name == sample and labels.items() <= s.labels.items()
    ]
    assert len(found) <= 1, f"{sample}{labels} is ambiguous: {found}"
    return found[0] if found else None


async def scrape(st: Stack) -> dict[str, list[Sample]]:
    resp = await st.http.get("/metrics")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(resp.text)


async def pool_operations(client: Client, pool: str, count: int) -> list[str]:
    """The pool's operations from visibility (which may lag a moment behind)."""
    query = f"{attributes.POOL.name} = '{pool}'"
    deadline = time.monotonic() + 30
    while True:
        ids = [wf.id async for wf in client.list_workflows(query)]
        if len(ids) >= count or time.monotonic() > deadline:
            return ids
        await asyncio.sleep(0.2)


async def test_operations_pools_and_requests_after_a_scale_out(st: Stack) -> None:
    pool = st.settings.default_pool_name
    api = str(st.http.base_url).rstrip("/")
    # Keys for the migration to move.
    await asyncio.to_thread(write_all, api, pool, keyset(500))

    resp = await st.http.post(f"/v1/scale/out/{pool}")
    assert resp.status_code == 201, resp.text
    await st.wait_status(resp.json()["ID"])
    await st.wait_pool(pool, 2)
    assert (await st.http.get("/v1/pools/no-such-pool")).status_code == 404
    assert (await st.http.get("/no/such/route")).status_code == 404

    # The pool's two operations: the top-up to MinCount when the policy was put, and ours.
    ops = await pool_operations(st.client, pool, 2)
    assert len(ops) == 2, ops
    docs = [(await st.http.get(f"/v1/scale/status/{i}")).json() for i in ops]
    assert [d["Status"] for d in docs] == ["success", "success"], docs
    moved = [moved_by(e["Message"]) for d in docs for e in d["Events"]]
    slots = sum(m[0] for m in moved if m)
    keys = sum(m[1] for m in moved if m)
    assert slots > 0 and keys > 0, docs

    m = await scrape(st)
    op = {"kind": "out", "pool": pool}
    assert value(m, "scaleflow_operations_started_total", **op) == 2
    assert value(m, "scaleflow_operations_succeeded_total", **op) == 2
    assert value(m, "scaleflow_operations_failed_total", **op) is None
    assert value(m, "scaleflow_operations_cancelled_total", **op) is None
    assert value(m, "scaleflow_operations_running", **op) is None
    done = {**op, "status": "succeeded"}
    assert value(m, "scaleflow_operation_duration_seconds_count", **done) == 2
    assert value(m, "scaleflow_operation_duration_seconds_bucket", **done, le="+Inf") == 2
    assert (value(m, "scaleflow_operation_duration_seconds_sum", **done) or 0) > 0
    assert value(m, "scaleflow_slots_moved_total", **op) == slots
    assert value(m, "scaleflow_keys_moved_total", **op) == keys

    assert value(m, "scaleflow_pool_size", pool=pool) == 2
    assert value(m, "scaleflow_pool_nodes", pool=pool, state="ready") == 2
    assert value(m, "scaleflow_pool_min_nodes", pool=pool) == 1
    assert value(m, "scaleflow_pool_max_nodes", pool=pool) == 8
    assert value(m, "scaleflow_pool_queued_operations", pool=pool) == 0
    info = {"pool": pool, "engine": "memcached", "provider": "local"}
    assert value(m, "scaleflow_pool_info", **info) == 1
    assert value(m, "scaleflow_autoscaler_enabled", pool=pool) == 0
    assert value(m, "scaleflow_autoscaler_max_miss_rate_threshold", pool=pool) == 0.6
    assert value(m, "scaleflow_autoscaler_min_miss_rate_threshold", pool=pool) == 0.4

    http = "scaleflow_http_requests_total"
    assert value(m, http, method="PUT", route="/v1/policy/{client_class}", status="200") == 1
    assert value(m, http, method="POST", route="/v1/scale/out/{client_class}", status="201") == 1
    assert (value(m, http, method="GET", route="/v1/scale/status/{op_id}", status="200") or 0) >= 3
    assert value(m, http, method="GET", route="/v1/pools/{name}", status="404") == 1
    assert value(m, http, method="GET", route="unmatched", status="404") == 1
    routes = {s.labels["route"] for s in m["scaleflow_http_requests"]}
    assert not any(pool in r or "no-such" in r for r in routes), routes

    # Counters only go up: a second scrape counts nothing again.
    again = await scrape(st)
    assert value(again, "scaleflow_operations_started_total", **op) == 2
    assert value(again, "scaleflow_keys_moved_total", **op) == keys
    assert value(again, "scaleflow_http_requests_total", method="GET", route="/metrics") == 1


async def test_autoscaler_readings_are_the_last_sample(st: Stack) -> None:
    pool = st.settings.default_pool_name
    api = str(st.http.base_url).rstrip("/")
    await asyncio.to_thread(write_all, api, pool, keyset(100))
    # Sample every second; thresholds the miss rate can never cross, so no resize.
    fast = {"interval_s": 1, "auto_mode": True, "min_miss_rate_threshold": 0}
    fast |= {"max_miss_rate_threshold": 1}
    assert (await st.http.post("/api/scaler/config", json=fast)).status_code == 200
    handle = st.client.get_workflow_handle(pool_workflow_id(pool))
    samples: list[StatsSample] = []
    deadline = time.monotonic() + 60
    while not any(s.items for s in samples):
        assert time.monotonic() < deadline, f"no statistics sample with items: {samples}"
        await asyncio.sleep(0.3)
        samples = await handle.query(PoolWorkflow.stats)

    m = await scrape(st)
    at = value(m, "scaleflow_autoscaler_sample_timestamp_seconds", pool=pool)
    assert at is not None
    # Samples keep coming: compare with the one the scrape read, found by its time.
    samples = await handle.query(PoolWorkflow.stats)
    read = [s for s in samples if abs(s.at.timestamp() - at) < 1e-3]
    assert len(read) == 1, (at, samples)
    sample = read[0]
    assert value(m, "scaleflow_autoscaler_items", pool=pool) == sample.items
    assert value(m, "scaleflow_autoscaler_bytes", pool=pool) == sample.bytes
    assert value(m, "scaleflow_autoscaler_miss_rate", pool=pool) == sample.miss_rate
    assert value(m, "scaleflow_autoscaler_hit_rate", pool=pool) == sample.hit_rate
    rpm = value(m, "scaleflow_autoscaler_requests_per_minute", pool=pool)
    assert rpm == sample.requests_per_minute
    assert value(m, "scaleflow_autoscaler_enabled", pool=pool) == 1
    assert value(m, "scaleflow_autoscaler_max_miss_rate_threshold", pool=pool) == 1


async def test_a_pool_that_cannot_answer_is_skipped_and_counted(st: Stack) -> None:
    # A pool entity of this deployment whose input the worker cannot read: its workflow
    # task fails, so its queries cannot be answered.
    mute = f"mute-{uuid.uuid4().hex[:8]}"
    handle = await st.client.start_workflow(
        "PoolWorkflow",
        {"config": {"name": mute, "min_count": "not a number"}},
        id=pool_workflow_id(mute),
        task_queue=st.settings.task_queue,
    )
    try:
        m = await scrape(st)
    finally:
        await handle.terminate("test finished")
    assert value(m, "scaleflow_metrics_pool_query_failures_total", pool=mute) == 1
    assert value(m, "scaleflow_pool_size", pool=mute) is None
    # The other pools are still there.
    assert value(m, "scaleflow_pool_size", pool=st.settings.default_pool_name) == 1


async def test_worker_serves_sdk_metrics(dev_env: WorkflowEnvironment, tmp_path: Path) -> None:
    settings = stack_settings(tmp_path, dev_env.client)
    port = processes.free_port()
    worker = WorkerProcess(settings, extra_env={"SCALEFLOW_WORKER_METRICS_PORT": str(port)})
    worker.start()
    families: dict[str, list[Sample]] = {}
    try:
        deadline = datetime.now(UTC) + timedelta(seconds=60)
        async with httpx.AsyncClient(timeout=5) as http:
            # The slot gauges appear once the worker has started polling.
            while "temporal_worker_task_slots_available" not in families:
                assert worker.proc is not None and worker.proc.poll() is None, "worker died"
                assert datetime.now(UTC) < deadline, f"no SDK worker metrics: {list(families)}"
                with contextlib.suppress(httpx.TransportError):
                    resp = await http.get(f"http://127.0.0.1:{port}/metrics")
                    assert resp.status_code == 200, resp.text
                    families = parse(resp.text)
                await asyncio.sleep(0.2)
    finally:
        worker.stop()
    slots = families["temporal_worker_task_slots_available"]
    queues = {s.labels.get("task_queue") for s in slots}
    assert settings.task_queue in queues, slots


def test_moved_by_reads_both_engines_lines() -> None:
    memcached = "migrated slots 0-8191: 1,234 keys to node 127.0.0.1:4000"
    redis = "migrated slots 0-99, 200, 300-309: 12 keys (340 bytes) from a:1 to b:2"
    assert moved_by(memcached) == (8192, 1234)
    assert moved_by(redis) == (111, 12)
    assert moved_by("resumed migration of slots 0-99 after 5 keys") is None
