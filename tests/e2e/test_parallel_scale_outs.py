"""Scale-outs of an unslotted pool whose provider names nodes by id (``no-op``, engine
``none``) run side by side: a burst of them overlaps, each still ends in ``success``, the
pool ends with every node, a scale-in behind them waits until they have all closed,
and the pool's history replays."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from tests.bursts import assert_replays, burst, no_server_errors
from tests.e2e.stack import stack, stack_settings

OUTS = 8


async def turns_and_closes(client: Client, pool: str) -> tuple[list[str], dict, dict]:
    """From the pool's history: operations in the order it accepted them, the event at
    which each got its turn (started with a snapshot, or sent ``go``), and the event at
    which the pool saw it close."""
    order: list[str] = []
    turn: dict[str, int] = {}
    closed: dict[str, int] = {}
    history = await client.get_workflow_handle(f"pool/{pool}").fetch_history()
    for e in history.events:
        if e.event_type == EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED:
            attrs = e.start_child_workflow_execution_initiated_event_attributes
            order.append(attrs.workflow_id)
            if json.loads(attrs.input.payloads[0].data).get("snapshot") is not None:
                turn[attrs.workflow_id] = e.event_id
        elif e.event_type == EventType.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED:
            attrs = e.signal_external_workflow_execution_initiated_event_attributes
            if attrs.signal_name == "go":
                turn[attrs.workflow_execution.workflow_id] = e.event_id
        elif e.event_type == EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_COMPLETED:
            attrs = e.child_workflow_execution_completed_event_attributes
            closed[attrs.workflow_execution.workflow_id] = e.event_id
    return order, turn, closed


async def test_a_burst_of_scale_outs_runs_side_by_side(
    dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    settings = stack_settings(tmp_path, dev_env.client, default_pool=False)
    async with stack(settings, dev_env.client) as st:
        name = st.pool_name()
        resp = await st.put_policy(name, MinCount=0, MaxCount=20, Provider="no-op", Engine="none")
        assert resp.status_code == 200, resp.text

        outs = await burst(OUTS, lambda i: st.http.post(f"/v1/scale/out/{name}"))
        no_server_errors(outs)
        assert [r.status_code for r in outs] == [201] * OUTS
        scale_in = await st.http.post(f"/v1/scale/in/{name}")
        assert scale_in.status_code == 201, scale_in.text
        ids = [r.json()["ID"] for r in outs]
        docs = await asyncio.gather(
            *(st.wait_status(i, timeout_s=120) for i in [*ids, scale_in.json()["ID"]])
        )
        assert all(d["Status"] == "success" for d in docs), docs
        await st.wait_pool(name, OUTS - 1)

        order, turn, closed = await turns_and_closes(st.client, name)
        first_in = order.index(scale_in.json()["ID"])
        assert sorted(order[:first_in]) == sorted(ids)
        # One at a time, each would get its turn after the one before it closed.
        outs_in_order = order[:first_in]
        side_by_side = [
            (a, b)
            for k, a in enumerate(outs_in_order)
            for b in outs_in_order[k + 1 :]
            if turn[b] < closed[a]
        ]
        assert side_by_side, (turn, closed)
        # The scale-in had its turn only once every scale-out ahead of it had closed.
        assert turn[order[first_in]] > max(closed[i] for i in ids), (turn, closed)
        await assert_replays(st.client, f"pool/{name}")
