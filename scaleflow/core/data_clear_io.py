"""Inputs and results of the data-clear activities (Pydantic over the wire)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from scaleflow.core.models import ActivityReport, Engine, Node

# How long each step may work before Temporal retries it; the RDS step also makes its
# statements give up by then, so that an abandoned attempt does not keep the locks.
FLUSH_WORK_S = 60.0
EMPTY_BUCKET_WORK_S = 3600.0
TRUNCATE_WORK_S = 600.0


class FlushInput(BaseModel):
    pool: str
    engine: Engine = Engine.MEMCACHED
    nodes: list[Node]


class FlushResult(ActivityReport):
    nodes: int = 0
    # Items the nodes held just before their flush.
    items: int = 0


class ClearInput(BaseModel):
    """S3 and RDS are the worker's own settings; the input only says who asks."""

    pool: str
    op_id: str


class EmptyBucketResult(ActivityReport):
    # None: no bucket is configured.
    bucket: str | None = None
    objects: int = 0
    versioned: bool = False


class TruncateResult(ActivityReport):
    tables: list[str] = Field(default_factory=list)
    rows: int = 0
