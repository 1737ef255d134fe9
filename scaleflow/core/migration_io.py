"""Inputs and results of slot migration."""

from __future__ import annotations

from pydantic import BaseModel, Field

from scaleflow.core.models import ActivityReport, OperationStatus
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


class SlotMigrationProgress(BaseModel):
    """What ``SlotMigrationWorkflow.progress`` answers: the moves finished so far."""

    slots_done: int = 0
    slots_total: int = 0
    keys_moved: int = 0
    moves_done: int = 0
    moves_total: int = 0


class OperationProgress(BaseModel):
    """``GET /v1/scale/progress/{id}``: an operation's slot migrations, summed.

    ``status`` is the one ``GET /v1/scale/status/{id}`` reads; ``migrations`` names
    the migration children counted (an operation may run one, none, or, compensating,
    a second that moves the slots back)."""

    status: OperationStatus
    slots_done: int
    slots_total: int
    keys_moved: int
    details: str
    migrations: list[str] = Field(default_factory=list)
