"""Inputs and results of activities (Pydantic over the wire)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from scaleflow.core.models import ActivityReport, Node, PoolConfig


class ProvisionInput(BaseModel):
    pool: str
    node_id: str
    config: PoolConfig
    # Provider refs the pool already holds, so a provider can tell its new node apart.
    known_refs: list[str] = Field(default_factory=list)


class ProvisionResult(ActivityReport):
    node: Node


class TerminateInput(BaseModel):
    pool: str
    node: Node
    config: PoolConfig


class ListNodesInput(BaseModel):
    pool: str
    config: PoolConfig


class ListNodesResult(ActivityReport):
    # None: the provider has no view of membership (no-op); keep the pool's own.
    nodes: list[Node] | None = None


class ReadyInput(BaseModel):
    node: Node
    config: PoolConfig
    timeout_s: float


class ReadyResult(ActivityReport):
    node: Node


class LoadInput(BaseModel):
    nodes: list[Node]
    config: PoolConfig


class LoadResult(ActivityReport):
    load: dict[str, float] = Field(default_factory=dict)


class DrainInput(BaseModel):
    node: Node
    config: PoolConfig
    # Absolute, so that a resumed drain keeps the original deadline; 0 asks for one
    # final reading after the workflow's own deadline timer has fired.
    deadline_ns: int
    # The activity returns after at most this long; the workflow calls it again.
    slice_s: float = 30.0
    # Whether this is the drain's first slice (it announces the drain).
    first: bool = True


class DrainResult(ActivityReport):
    completed: bool
    remaining: int = 0
