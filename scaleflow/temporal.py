"""Connecting to Temporal the one way every part of scaleflow does."""

from __future__ import annotations

import asyncio

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from scaleflow.core.settings import Settings


async def connect(settings: Settings, attempts: int = 1, delay_s: float = 0.5) -> Client:
    """Connect with Pydantic over the wire; retry while a just-started server comes up."""
    for attempt in range(attempts):
        try:
            return await Client.connect(
                settings.temporal_address,
                namespace=settings.temporal_namespace,
                data_converter=pydantic_data_converter,
            )
        except RuntimeError:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(delay_s)
    raise AssertionError("unreachable")
