"""The nomad engine (placeholder until the Nomad HTTP client lands)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from scaleflow.core.activity_io import (
    DrainInput,
    DrainResult,
    LoadInput,
    LoadResult,
    ReadyInput,
    ReadyResult,
)
from scaleflow.core.settings import Settings


class NomadEngine:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def ready(self, req: ReadyInput, heartbeat: Callable[..., Any]) -> ReadyResult:
        raise NotImplementedError

    def load(self, req: LoadInput) -> LoadResult:
        raise NotImplementedError

    def drain(self, req: DrainInput, heartbeat: Callable[..., Any]) -> DrainResult:
        raise NotImplementedError
