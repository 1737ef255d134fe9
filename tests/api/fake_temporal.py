"""A stand-in for the Temporal client, for tests of what the API does around updates.

It is a double, not a server: updates can be held (to fill the API's queue) or made to
fail with chosen errors, which a real server cannot be made to do on cue. Tests of
workflow behaviour use the real servers (``tests/conftest.py``).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
from temporalio.client import Client, WithStartWorkflowOperation
from temporalio.service import RPCError, RPCStatusCode

from scaleflow.api.app import create_app
from scaleflow.core.models import OperationAccepted
from scaleflow.core.settings import Settings


class TightSettings(Settings):
    """Settings with the limiter's fields, which ``Settings`` does not have yet."""

    max_inflight_updates: int = 2
    update_wait_s: float = 0.2


def settings_for(tmp: Path, **over: Any) -> TightSettings:
    # No compute file: start-up then sends no update of its own.
    return TightSettings(state_dir=tmp / "state", computes_file=tmp / "absent.toml", **over)


def rpc(status: RPCStatusCode, message: str) -> RPCError:
    return RPCError(message, status, b"")


@dataclass
class Call:
    workflow_id: str
    update: str
    update_id: str | None
    with_start: bool


def _result(update: str, args: list[Any]) -> Any:
    if update == "submit":
        return OperationAccepted(id=str(uuid.uuid4()))
    if update == "evaluate":
        return "no change"
    return args[0] if args else None  # the registry's create/replace echo the compute


@dataclass(eq=False)  # hashed by identity, as a real client is
class FakeTemporal:
    calls: list[Call] = field(default_factory=list)
    # Raised, in order, by the next update calls; then updates succeed.
    failures: list[BaseException] = field(default_factory=list)
    query_error: BaseException | None = None
    # Cleared: updates wait inside "Temporal" until it is set.
    release: asyncio.Event = field(default_factory=asyncio.Event)
    inside: int = 0
    peak: int = 0

    def __post_init__(self) -> None:
        self.release.set()

    def get_workflow_handle(self, workflow_id: str) -> FakeHandle:
        return FakeHandle(self, workflow_id)

    async def execute_update_with_start_workflow(
        self,
        update: Any,
        *,
        args: list[Any],
        start_workflow_operation: WithStartWorkflowOperation[Any, Any],
        id: str | None = None,
    ) -> Any:
        op = start_workflow_operation
        # As the SDK does: an operation is good for one call only.
        if op._used:
            raise RuntimeError("WithStartWorkflowOperation cannot be reused")
        op._used = True
        return await self.update(op._start_workflow_input.id, update, args, id, with_start=True)

    async def update(
        self, workflow_id: str, update: Any, args: list[Any], update_id: str | None, **kw: bool
    ) -> Any:
        name = update.__name__
        self.calls.append(Call(workflow_id, name, update_id, kw.get("with_start", False)))
        if self.failures:
            raise self.failures.pop(0)
        self.inside += 1
        self.peak = max(self.peak, self.inside)
        try:
            await self.release.wait()
        finally:
            self.inside -= 1
        return _result(name, args)


@dataclass
class FakeHandle:
    fake: FakeTemporal
    id: str

    async def execute_update(self, update: Any, *, args: list[Any], id: str | None = None) -> Any:
        return await self.fake.update(self.id, update, args, id)

    async def describe(self) -> Any:
        raise rpc(RPCStatusCode.NOT_FOUND, f"workflow {self.id} not found")

    async def query(self, *_: Any, **__: Any) -> Any:
        raise self.fake.query_error or rpc(RPCStatusCode.NOT_FOUND, "workflow not found")


@asynccontextmanager
async def serve(settings: Settings, fake: FakeTemporal) -> AsyncIterator[httpx.AsyncClient]:
    """The real app (lifespan included) on the fake, and an HTTP client for it."""
    app = create_app(settings, client=cast(Client, fake))
    # An unhandled error must show as the 500 a client would get, not as an exception.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://api", timeout=10) as http,
    ):
        yield http
