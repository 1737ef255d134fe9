"""The worker SIGKILLed in the middle of a broker slot migration, through HTTP.

A cluster of 4 nodes holds enough keys that auto-scaling it to 8 moves slots for a few
seconds. Once a move's activity has heartbeated progress, the worker (a subprocess) is
SIGKILLed and a new one started. Each move that was running carries on from its last
heartbeat, not from its first slot: the attempt that completes it is not the first, and
it reports where it resumed (``resumed_at``, and "resumed migration ..." in the
operation's events), at or after the slot the heartbeat named. The operation ends in
success, no key is lost, and Redis matches the metadata.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from redis.cluster import RedisCluster
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from scaleflow.core.broker.activity_io import (
    MigrateSlotsInput,
    MigrateSlotsProgress,
    MigrateSlotsResult,
)
from tests.activities.test_redis_proxies import redis_pids_under
from tests.e2e.test_broker_load import (
    CLUSTER,
    BrokerE2E,
    assert_matches,
    broker_stack,
    cluster_check,
    owning,
)

MIGRATE = "migrate_redis_slots"
# Enough that a move takes seconds on two cores, so the kill lands in its middle.
KEYS = 150_000
VALUE = "v" * 64


def write_keys(seed: str) -> dict[str, str]:
    host, _, port = seed.rpartition(":")
    rc = RedisCluster(host=host, port=int(port), decode_responses=True)
    values = {f"crash:{i}": f"{i}:{VALUE}" for i in range(KEYS)}
    try:
        items = list(values.items())
        for i in range(0, len(items), 5000):
            pipe = rc.pipeline()
            for k, v in items[i : i + 5000]:
                pipe.set(k, v)
            assert all(pipe.execute())
    finally:
        rc.close()
    return values


def missing(seed: str, values: dict[str, str]) -> list[str]:
    host, _, port = seed.rpartition(":")
    rc = RedisCluster(host=host, port=int(port), decode_responses=True)
    lost: list[str] = []
    try:
        keys = list(values)
        for i in range(0, len(keys), 5000):
            batch = keys[i : i + 5000]
            got = rc.mget_nonatomic(batch)
            lost += [k for k, v in zip(batch, got, strict=True) if v != values[k]]
    finally:
        rc.close()
    return lost


async def moves_in_progress(
    client: Client, op_id: str, timeout_s: float = 120
) -> dict[str, MigrateSlotsProgress]:
    """Activity id -> heartbeat details of the running moves, once one shows keys moved."""
    handle = client.get_workflow_handle(op_id)
    convert = client.data_converter.payload_converter
    deadline = time.monotonic() + timeout_s
    seen: list[str] = []
    while time.monotonic() < deadline:
        desc = await handle.describe()
        seen = [
            f"{p.activity_type.name} attempt {p.attempt} {p.state}: {p.last_failure.message}"
            for p in desc.raw_description.pending_activities
        ]
        found = {}
        for pending in desc.raw_description.pending_activities:
            if pending.activity_type.name != MIGRATE or not pending.heartbeat_details.payloads:
                continue
            details = convert.from_payloads(pending.heartbeat_details.payloads)
            found[pending.activity_id] = MigrateSlotsProgress.model_validate(details[0])
        if any(p.keys > 0 and p.slots_done > 0 for p in found.values()):
            return found
        await asyncio.sleep(0.02)
    raise AssertionError(f"no move ever heartbeated progress; pending: {seen}")


async def completed_moves(
    client: Client, op_id: str
) -> dict[str, tuple[MigrateSlotsInput, int, MigrateSlotsResult]]:
    """Activity id -> (input, attempt that completed it, result) for every finished move."""
    convert = client.data_converter.payload_converter
    scheduled: dict[int, tuple[str, MigrateSlotsInput]] = {}
    attempts: dict[int, int] = {}
    out = {}
    async for ev in client.get_workflow_handle(op_id).fetch_history_events():
        if ev.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            attrs = ev.activity_task_scheduled_event_attributes
            if attrs.activity_type.name == MIGRATE:
                inp = MigrateSlotsInput.model_validate(
                    convert.from_payloads(attrs.input.payloads)[0]
                )
                scheduled[ev.event_id] = (attrs.activity_id, inp)
        elif ev.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            attrs = ev.activity_task_started_event_attributes
            attempts[attrs.scheduled_event_id] = attrs.attempt
        elif ev.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            attrs = ev.activity_task_completed_event_attributes
            if attrs.scheduled_event_id in scheduled:
                activity_id, inp = scheduled[attrs.scheduled_event_id]
                raw = convert.from_payloads(attrs.result.payloads)[0]
                result = MigrateSlotsResult.model_validate(raw)
                out[activity_id] = (inp, attempts[attrs.scheduled_event_id], result)
    return out


async def test_worker_killed_mid_slot_migration_resumes_from_heartbeat(
    dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    async with broker_stack(dev_env, tmp_path) as b:
        first = b.workers[0]
        assert len(await b.provision()) == 8
        await b.change("POST", f"/clusters/meta/{CLUSTER}", json={"node_number": 4})
        meta = await assert_matches(b, CLUSTER)
        seed = meta.clusters[CLUSTER].nodes[0].address
        values = await asyncio.to_thread(write_keys, seed)

        op = await start_scale_out(b)
        at_kill = await moves_in_progress(b.st.client, op)
        first.kill()
        b.start_worker()
        doc = await b.st.wait_status(op, timeout_s=180)

        moves = await completed_moves(b.st.client, op)
        for activity_id, progress in at_kill.items():
            assert activity_id in moves, f"move {activity_id} never completed: {moves}"
            inp, attempt, result = moves[activity_id]
            assert attempt > 1, f"move {activity_id} finished in the attempt the kill cut"
            resumed_at = result.resumed_at
            assert resumed_at is not None, f"move {activity_id} started over: {result}"
            # From its heartbeat (or a later one), not from the first slot of the move.
            order = [s for a, z in inp.ranges for s in range(a, z + 1)]
            assert order.index(resumed_at) >= order.index(progress.next_slot) > 0, (
                progress,
                result,
            )
            assert result.keys >= progress.keys, (progress, result)
        resumed = [e["Message"] for e in doc["Events"] if "resumed migration" in e["Message"]]
        assert len(resumed) >= len(at_kill), doc["Events"]

        meta = await assert_matches(b, CLUSTER)
        assert len(owning(meta)) == 4
        assert await asyncio.to_thread(missing, seed, values) == []
        out = await asyncio.to_thread(cluster_check, seed)
        assert "[OK] All 16384 slots covered." in out, out
        assert "[WARNING]" not in out and "[ERR]" not in out, out

        await b.remove_everything()
        assert redis_pids_under(b.state_dir) == [], "redis-server processes were left"


async def start_scale_out(b: BrokerE2E) -> str:
    """Auto-scale to 8 nodes; the operation's id, without waiting for it."""
    resp = await b.http.post(f"/api/v2/clusters/migrations/auto/{CLUSTER}/8")
    assert resp.status_code == 200, resp.text
    op = resp.headers["X-Operation-ID"]
    assert isinstance(op, str)
    return op
