"""Helpers of the genisys tests."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from typing import Any

import httpx
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.workflowservice.v1 import DeleteWorkflowExecutionRequest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from scaleflow.core.genisys import REGISTRY_ID
from tests.polling import Backoff


async def retire(client: Client, task_queue: str) -> None:
    """Entities outlive a test and poll its task queue; end them. The registry has one
    fixed id for the whole dev server, so each test starts with a fresh one."""
    await forget_registry(client)
    query = f"TaskQueue = '{task_queue}' AND ExecutionStatus = 'Running'"
    with contextlib.suppress(Exception):
        async for wf in client.list_workflows(query):
            with contextlib.suppress(Exception):
                await client.get_workflow_handle(wf.id).terminate("test finished")


async def forget_registry(client: Client) -> None:
    """Deletes the registry entity outright: a merely terminated one would be read back
    (seeded) by the next write, through a query no worker of its task queue answers."""
    request = DeleteWorkflowExecutionRequest(
        namespace=client.namespace, workflow_execution=WorkflowExecution(workflow_id=REGISTRY_ID)
    )
    with contextlib.suppress(RPCError):
        await client.workflow_service.delete_workflow_execution(request)

    async def gone() -> bool:
        # Deletion is asynchronous on the server (closed first, removed later): a closed
        # registry no longer takes part in the next test.
        try:
            desc = await client.get_workflow_handle(REGISTRY_ID).describe()
        except RPCError as exc:
            return exc.status == RPCStatusCode.NOT_FOUND
        return desc.status != WorkflowExecutionStatus.RUNNING

    await eventually(gone, "the compute registry was not deleted")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def define(http: httpx.AsyncClient, name: str, connector: str) -> None:
    resp = await http.post("/compute", json={"name": name, "connector": connector})
    assert resp.status_code == 201, resp.text


async def upscale(http: httpx.AsyncClient, service: str, compute: str, way: str = "up") -> str:
    resp = await http.post(f"/service/{service}/{way}scale", json={"compute": compute})
    assert resp.status_code == 201, resp.text
    return resp.json()["ID"]


async def eventually(check: Callable[[], Any], what: str, timeout_s: float = 60) -> Any:
    """Polls ``check`` (sync or async) until it returns something truthy."""
    wait = Backoff(timeout_s)
    last: Any = None
    while not wait.expired():
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await wait.sleep()
    raise AssertionError(f"{what}: last saw {last!r}")
