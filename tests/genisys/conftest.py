"""A real stack (dev server, API on a port, in-process worker) for the genisys surface,
and stub connectors that tests start and stop."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment

from tests.e2e.stack import Stack, stack, stack_settings
from tests.genisys.connector_stub import StubConnector
from tests.genisys.helpers import retire


@pytest.fixture
async def st(dev_env: WorkflowEnvironment, tmp_path: Path) -> AsyncIterator[Stack]:
    settings = stack_settings(tmp_path, dev_env.client, computes_file=tmp_path / "none.toml")
    await retire(dev_env.client, settings.task_queue)
    async with stack(settings, dev_env.client) as s:
        try:
            yield s
        finally:
            await retire(dev_env.client, settings.task_queue)


@pytest.fixture
def connectors() -> Iterator[Callable[..., StubConnector]]:
    made: list[StubConnector] = []

    def make(services: dict[str, int] | None = None, **kw: Any) -> StubConnector:
        stub = StubConnector(services, **kw)
        made.append(stub)
        return stub

    yield make
    for stub in made:
        stub.stop()
