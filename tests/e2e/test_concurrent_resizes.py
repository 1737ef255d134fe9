"""50 concurrent manual resize requests: one queue, in order, exact, within bounds.
Scale-outs of this unslotted ``no-op`` pool may run side by side; a scale-in runs alone."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

from temporalio.api.enums.v1 import EventType
from temporalio.testing import WorkflowEnvironment

from tests.e2e.stack import stack, stack_settings


async def test_fifty_concurrent_resizes(dev_env: WorkflowEnvironment, tmp_path: Path) -> None:
    settings = stack_settings(tmp_path, dev_env.client)
    async with stack(settings, dev_env.client) as st:
        name = st.pool_name()
        # Nodes with nothing to start or drain, so 50 operations run quickly.
        await st.put_policy(name, MinCount=0, MaxCount=5, Provider="no-op", Engine="none")
        kinds = ["out" if i % 5 < 3 else "in" for i in range(50)]
        resps = await asyncio.gather(
            *(
                st.http.post(f"/v1/scale/{k}/{name}", headers={"X-Request-ID": f"r{i}"})
                for i, k in enumerate(kinds)
            )
        )
        accepted = [
            (k, r.json()["ID"]) for k, r in zip(kinds, resps, strict=True) if r.status_code == 201
        ]
        refused = [r for r in resps if r.status_code != 201]
        assert all(r.status_code in (412, 422) for r in refused), [r.text for r in refused]
        assert accepted, "some requests were accepted"

        # A repeat of an accepted request id is answered with its first operation.
        # (A refused request's id is not reserved: repeating it is a new request.)
        first = next(i for i, r in enumerate(resps) if r.status_code == 201)
        again = await st.http.post(
            f"/v1/scale/{kinds[first]}/{name}", headers={"X-Request-ID": f"r{first}"}
        )
        assert again.status_code == 201
        assert again.json()["ID"] == resps[first].json()["ID"]

        # The order the pool accepted them: its own history's child-start commands.
        pool_events = [
            e async for e in st.client.get_workflow_handle(f"pool/{name}").fetch_history_events()
        ]
        order = [
            e.start_child_workflow_execution_initiated_event_attributes.workflow_id
            for e in pool_events
            if e.event_type == EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED
        ]
        kinds_by_id = {op: kind for kind, op in accepted}
        assert sorted(order) == sorted(kinds_by_id)

        spans = []
        for op in order:
            await st.wait_status(op)
            events = [e async for e in st.client.get_workflow_handle(op).fetch_history_events()]
            work = [
                e.event_time.ToNanoseconds()
                for e in events
                if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
                or e.marker_recorded_event_attributes.marker_name == "core_local_activity"
            ]
            spans.append((work[0], events[-1].event_time.ToNanoseconds()))
        # A scale-in ran only after everything accepted before it had ended, and nothing
        # accepted after it began before it ended.
        for (i, before), (j, after) in itertools.combinations(enumerate(spans), 2):
            if "in" in (kinds_by_id[order[i]], kinds_by_id[order[j]]):
                assert after[0] >= before[1], "a scale-in overlapped or ran out of order"
        # Along that order the size never left the bounds; the end size is exact.
        size = 0
        for op in order:
            size += 1 if kinds_by_id[op] == "out" else -1
            assert 0 <= size <= 5
        view = await st.wait_pool(name, size)
        assert len(view["nodes"]) == size
