"""Inputs and results of slot migration."""

from __future__ import annotations

from pydantic import BaseModel, Field

from scaleflow.core.models import ActivityReport
from scaleflow.core.slots import Move, SlotMap


class MigrateInput(BaseModel):
    move: Move
    source_address: str
    target_address: str
    batch: int = 500
    rate_mb_s: float = 0.0  # 0: as fast as it goes


class MigrateResult(ActivityReport):
    keys: int
    bytes: int
    resumed_after: int = 0


class PurgeInput(BaseModel):
    move: Move
    address: str
    rate_mb_s: float = 0.0


class MigrationProgress(BaseModel):
    """Heartbeat details: where a retried copy picks up."""

    last_key: str  # hex; keys are copied in sorted order
    keys: int
    bytes: int


class MigrationInput(BaseModel):
    pool: str
    slot_map: SlotMap
    moves: list[Move]
    limit: int = 2
    grace_s: float = 1.0
    # False when the sources are about to be terminated anyway.
    purge: bool = True
    # Workflows told of every map change (the pool, and the operation that asked).
    notify: list[str] = Field(default_factory=list)
    rate_mb_s: float = 0.0


class MigrationResult(BaseModel):
    slot_map: SlotMap
    moved: list[Move]
    keys: int
