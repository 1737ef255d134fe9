"""What the Temporal UI shows of an operation: the workflows' static summaries and
details (read back with ``describe()``), a summary on every activity and timer in the
histories, and the migration's current details (slots and keys moved)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from scaleflow.stack import ensure_default_pool
from tests.e2e.stack import stack, stack_settings

SUMMARISED = {
    EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED: "activity",
    EventType.EVENT_TYPE_TIMER_STARTED: "timer",
    # A local activity leaves a marker.
    EventType.EVENT_TYPE_MARKER_RECORDED: "activity",
}


async def summaries(client: Client, workflow_id: str) -> list[tuple[str, str]]:
    """(kind, summary) of each activity and timer in the history; "" when it has none."""
    out = []
    convert = client.data_converter.payload_converter
    async for ev in client.get_workflow_handle(workflow_id).fetch_history_events():
        kind = SUMMARISED.get(ev.event_type)
        marker = ev.marker_recorded_event_attributes.marker_name
        if kind is None or marker not in ("", "core_local_activity"):
            continue  # a patch's marker is no activity
        has = ev.HasField("user_metadata") and ev.user_metadata.HasField("summary")
        out.append((kind, convert.from_payload(ev.user_metadata.summary, str) if has else ""))
    return out


async def metadata(client: Client, workflow_id: str) -> Any:
    return await client.get_workflow_handle(workflow_id).query("__temporal_workflow_metadata")


async def test_operations_tell_their_story_in_the_ui(
    dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    name = f"ui-{uuid.uuid4().hex[:6]}"
    settings = stack_settings(tmp_path, dev_env.client, default_pool_name=name)
    client = dev_env.client
    async with stack(settings, client) as st:
        st.pools.append(name)
        await ensure_default_pool(client, settings)
        await st.wait_pool(name, 1)
        out = (await st.http.post(f"/v1/scale/out/{name}")).json()["ID"]
        await st.wait_status(out)
        await st.wait_pool(name, 2)
        inward = (await st.http.post(f"/v1/scale/in/{name}")).json()["ID"]
        await st.wait_status(inward)

        entity = await client.get_workflow_handle(f"pool/{name}").describe()
        assert await entity.static_summary() == (
            f"pool {name}: the entity that queues its operations"
        )
        for op, kind in ((out, "scale-out"), (inward, "scale-in")):
            desc = await client.get_workflow_handle(op).describe()
            assert await desc.static_summary() == f"{kind} pool {name} by 1 (api)"
            details = await desc.static_details()
            assert details is not None and f"- pool: `{name}`" in details
            assert "- provider: local" in details

        said = await summaries(client, out)
        assert ("activity", "") not in said, said
        assert any(k == "activity" and s.startswith("provision node ") for k, s in said), said
        said = await summaries(client, inward)
        assert ("activity", "") not in said, said
        assert any(s.startswith("terminate node ") for _, s in said), said

        # The scale-out moved half the slots onto its node in a migration child.
        migration = f"{out}-migration-1"
        desc = await client.get_workflow_handle(migration).describe()
        summary = await desc.static_summary()
        assert summary is not None and summary.startswith("move 8192 slots of pool "), summary
        said = await summaries(client, migration)
        assert ("activity", "") not in said and ("timer", "") not in said, said
        assert any(s.startswith("copy slots 8192-16383 to ") for _, s in said), said
        assert ("timer", "grace for clients to see the new map") in said
        details = (await metadata(client, migration)).current_details
        assert details.startswith("8192 of 8192 slots and "), details
