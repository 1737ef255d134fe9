"""Shared pieces of the burst tests: fire requests at once, sample a size while they
run, and replay an entity's history."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from scaleflow.worker import WORKFLOWS

if TYPE_CHECKING:
    from tests.e2e.stack import Stack

HISTORIES = Path(__file__).parent / "histories"


async def burst(n: int, send: Callable[[int], Awaitable[httpx.Response]]) -> list[httpx.Response]:
    """``n`` requests sent at once (each its own task), answers in request order."""
    return list(await asyncio.gather(*(send(i) for i in range(n))))


def no_server_errors(resps: list[httpx.Response]) -> None:
    bad = [(r.status_code, r.text[:200]) for r in resps if r.status_code >= 500]
    assert not bad, f"{len(bad)} answers were 5xx: {bad[:5]}"


@dataclass
class Sampler:
    """Reads a size over and over while a burst runs; keeps every value seen."""

    read: Callable[[], Awaitable[int | None]]
    seen: list[int] = field(default_factory=list)

    async def _loop(self) -> None:
        while True:
            value = await self.read()
            if value is not None:
                self.seen.append(value)
            # Twenty reads a second: dense enough to catch a step past a bound, sparse
            # enough to leave the CPU to the burst it watches.
            await asyncio.sleep(0.05)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Sampler]:
        task = asyncio.create_task(self._loop())
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def within(self, low: int, high: int) -> None:
        assert self.seen, "the sampler read nothing"
        assert low <= min(self.seen) and max(self.seen) <= high, (
            f"size left [{low}, {high}]: saw {min(self.seen)}..{max(self.seen)}"
        )


async def assert_replays(client: Client, workflow_id: str, keep_as: str | None = None) -> None:
    """The entity's history so far replays against today's workflows. With
    SCALEFLOW_RECORD_HISTORIES=1 it is also kept under tests/histories/."""
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    replayer = Replayer(workflows=WORKFLOWS, data_converter=pydantic_data_converter)
    await replayer.replay_workflow(history)
    if keep_as and os.environ.get("SCALEFLOW_RECORD_HISTORIES") == "1":
        (HISTORIES / f"{keep_as}.json").write_text(history.to_json())


async def pool_size(st: Stack, name: str) -> int | None:
    resp = await st.http.get(f"/v1/pools/{name}")
    return len(resp.json()["nodes"]) if resp.status_code == 200 else None


async def all_succeed(st: Stack, op_ids: list[str], timeout_s: float = 180) -> None:
    # One at a time: a pool runs its operations in turn, so the later ones are mostly
    # done when their turn to be read comes, and only one is being polled at once.
    deadline = time.monotonic() + timeout_s
    for op in op_ids:
        doc = await st.wait_status(op, timeout_s=max(1.0, deadline - time.monotonic()))
        assert doc["Status"] == "success", doc


async def still_answers(st: Stack, name: str) -> None:
    for path in (f"/v1/pools/{name}", f"/v1/pools/{name}/slots", f"/v1/scale/status?pool={name}"):
        resp = await st.http.get(path)
        assert resp.status_code == 200, (path, resp.text)
