"""ServiceWorkflow keeps a desired count, on the time-skipping server; the connector's
activities are replaced by name with a fake that keeps counts in memory."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from temporalio import activity
from temporalio.client import Client, WithStartWorkflowOperation, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from scaleflow.core.events import build_scaling_event
from scaleflow.core.genisys import (
    Compute,
    ConnectorCall,
    DesiredRequest,
    Direction,
    ScaleCall,
    ScaleResult,
    ServiceInit,
    ServiceOpInput,
    ServiceView,
    StatusResult,
    StepCall,
    StepRequest,
    StepResult,
    service_workflow_id,
)
from scaleflow.core.models import EventNote
from scaleflow.worker import WORKFLOWS
from scaleflow.workflows.services import ServiceScaleWorkflow, ServiceWorkflow
from tests.genisys.helpers import eventually

PERIOD = timedelta(seconds=15)


@dataclass
class FakeConnector:
    counts: dict[str, int] = field(default_factory=dict)
    scale_calls: list[int] = field(default_factory=list)

    def activities(self) -> list[object]:
        fake = self

        @activity.defn(name="connector_status")
        async def connector_status(call: ConnectorCall) -> StatusResult:
            n = fake.counts.get(call.service, 0)
            note = EventNote(message=f"runs {n}", source=call.compute.name)
            return StatusResult(protocol="v2", running=n, events=[note])

        @activity.defn(name="connector_scale")
        async def connector_scale(call: ScaleCall) -> ScaleResult:
            fake.scale_calls.append(call.number)
            fake.counts[call.service] = call.number
            note = EventNote(message=f"scaled to {call.number}", source=call.compute.name)
            return ScaleResult(applied=True, running=call.number, events=[note])

        @activity.defn(name="connector_step")
        async def connector_step(call: StepCall) -> StepResult:
            raise AssertionError("a v2 connector never gets start/kill")

        return [connector_status, connector_scale, connector_step]


@pytest.fixture
async def connector(time_env: WorkflowEnvironment) -> AsyncIterator[tuple[FakeConnector, str]]:
    fake = FakeConnector()
    queue = f"q-{uuid.uuid4()}"
    async with Worker(
        time_env.client, task_queue=queue, workflows=WORKFLOWS, activities=fake.activities()
    ):
        yield fake, queue


COMPUTE = Compute(name="fake-dc", connector="http://fake:7051")


async def keep(client: Client, queue: str, service: str, number: int) -> WorkflowHandle:
    op = WithStartWorkflowOperation(
        ServiceWorkflow.run,
        ServiceInit(name=service, period_s=PERIOD.total_seconds()),
        id=service_workflow_id(service),
        task_queue=queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )
    await client.execute_update_with_start_workflow(
        ServiceWorkflow.set_desired,
        DesiredRequest(number=number, compute=COMPUTE),
        start_workflow_operation=op,
    )
    return await op.workflow_handle()


async def settled(handle: WorkflowHandle, corrections: int, running: int) -> ServiceView:
    async def check() -> ServiceView | None:
        view: ServiceView = await handle.query(ServiceWorkflow.view)
        ok = len(view.corrections) == corrections and view.running_resources == running
        return view if ok and view.running is None else None

    return await eventually(check, f"no {corrections} corrections reaching {running}")


async def test_a_lost_resource_is_restored_within_one_period(time_env, connector) -> None:
    fake, queue = connector
    client = time_env.client
    service = f"svc-{uuid.uuid4().hex[:8]}"
    handle = await keep(client, queue, service, 3)
    try:
        # Setting the count checks at once: 0 running, so a first correction to 3.
        await settled(handle, corrections=1, running=3)
        assert fake.counts[service] == 3

        fake.counts[service] = 2  # a resource disappears behind the connector's back
        await time_env.sleep(PERIOD)
        view = await settled(handle, corrections=2, running=3)
        assert fake.counts[service] == 3
        assert fake.scale_calls == [3, 3]

        correction = client.get_workflow_handle(view.corrections[-1])
        await correction.result()
        history = await correction.fetch_history()
        doc = build_scaling_event(history.events, client.data_converter.payload_converter)
        assert doc.status == "success" and doc.direction == "out"
        assert doc.provider == "http-connector"
        assert doc.provider_cfg == {
            "compute": COMPUTE.name,
            "connector": COMPUTE.connector,
            "service": service,
        }
        own = [(e.message, e.source) for e in doc.events if e.source == COMPUTE.name]
        assert own == [("runs 2", COMPUTE.name), ("scaled to 3", COMPUTE.name)]

        # Nothing lost: a period passes without a correction.
        await time_env.sleep(PERIOD)
        await settled(handle, corrections=2, running=3)
        assert fake.scale_calls == [3, 3]
    finally:
        await handle.terminate("test finished")


async def test_manual_steps_move_the_kept_count(time_env, connector) -> None:
    fake, queue = connector
    client = time_env.client
    service = f"svc-{uuid.uuid4().hex[:8]}"
    handle = await keep(client, queue, service, 2)
    try:
        await settled(handle, corrections=1, running=2)
        op = await handle.execute_update(
            ServiceWorkflow.step,
            StepRequest(direction=Direction.OUT, compute=COMPUTE),
        )
        await client.get_workflow_handle(op).result()
        view = await settled(handle, corrections=1, running=3)
        assert view.desired == 3  # or the next check would undo the upscale
        await time_env.sleep(PERIOD)
        await settled(handle, corrections=1, running=3)
        assert fake.counts[service] == 3
    finally:
        await handle.terminate("test finished")


async def test_an_operation_started_alone_scales_by_one(time_env, connector) -> None:
    fake, queue = connector
    client = time_env.client
    fake.counts["alone"] = 4
    result = await client.execute_workflow(
        ServiceScaleWorkflow.run,
        ServiceOpInput(op_id="x", service="alone", compute=COMPUTE, direction=Direction.IN),
        id=str(uuid.uuid4()),
        task_queue=queue,
    )
    assert result.running == 3 and fake.counts["alone"] == 3
