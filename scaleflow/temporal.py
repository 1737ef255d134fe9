"""Connecting to Temporal the one way every part of scaleflow does."""

from __future__ import annotations

import asyncio

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import Runtime

from scaleflow.core.settings import Settings


async def connect(
    settings: Settings, attempts: int = 1, delay_s: float = 0.5, runtime: Runtime | None = None
) -> Client:
    """Connect with Pydantic over the wire; retry while a just-started server comes up.
    ``runtime`` (the SDK's; its default when None) carries its telemetry to the client
    and to every worker built on it."""
    for attempt in range(attempts):
        try:
            return await Client.connect(
                settings.temporal_address,
                namespace=settings.temporal_namespace,
                data_converter=pydantic_data_converter,
                runtime=runtime,
            )
        except RuntimeError:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(delay_s)
    raise AssertionError("unreachable")
