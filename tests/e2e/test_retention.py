"""Closed operations older than the retention window leave the listing."""

from __future__ import annotations

import asyncio
from pathlib import Path

from temporalio.testing import WorkflowEnvironment

from tests.e2e.stack import stack, stack_settings


async def test_listing_drops_operations_past_retention(
    dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    # A retention of about two seconds (the setting is in hours).
    settings = stack_settings(tmp_path, dev_env.client, event_retention_hours=2 / 3600)
    async with stack(settings, dev_env.client) as st:
        name = st.pool_name()
        await st.put_policy(name, MinCount=0, Provider="no-op", Engine="none")
        op = (await st.http.post(f"/v1/scale/out/{name}")).json()["ID"]
        await st.wait_status(op)
        listed = False
        for _ in range(20):
            if op in (await st.http.get("/v1/scale/status", params={"pool": name})).json():
                listed = True
                break
            await asyncio.sleep(0.1)
        assert listed, "a just-closed operation is listed"
        await asyncio.sleep(3)
        assert op not in (await st.http.get("/v1/scale/status", params={"pool": name})).json()
        # Still readable by ID.
        assert (await st.http.get(f"/v1/scale/status/{op}")).json()["Status"] == "success"
