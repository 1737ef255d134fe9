"""Models of the genisys surface: compute definitions, services and their operations.

A *compute* is a named provider instance: a link to a connector that creates and
removes a service's resources (containers, instances…) inside that compute. A
*service* is the genisys view of a pool; its entity workflow keeps a desired count.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, field_validator

from scaleflow.core.models import ActivityReport, valid_name

REGISTRY_ID = "genisys/computes"
PROVIDER = "http-connector"
RECONCILE_PERIOD_S = 15.0
MAX_RESOURCES = 10_000
MAX_URL_LENGTH = 2000


def service_workflow_id(name: str) -> str:
    return f"service/{name}"


def service_pool(name: str) -> str:
    """The ScaleflowPool search attribute of a service's operations."""
    return f"service/{name}"


def name_problem(kind: str, name: object) -> str | None:
    if not isinstance(name, str) or not valid_name(name):
        return f"Invalid {kind} name {name!r}: use 1-64 of [A-Za-z0-9@._-]."
    return None


def connector_problem(connector: object) -> str | None:
    """Why ``connector`` is not an http(s) URL a connector can be reached at, or None."""
    shown = repr(connector) if not isinstance(connector, str) else repr(connector[:200])
    bad = f"Invalid connector {shown}: expected an http(s) URL such as http://localhost:7051."
    if not isinstance(connector, str) or len(connector) > MAX_URL_LENGTH:
        return bad
    try:
        parts = urlsplit(connector)
        _ = parts.port  # raises on a port that is not a number in range
    except ValueError:
        return bad
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return bad
    if parts.query or parts.fragment or any(c.isspace() for c in connector):
        return bad
    return None


class Compute(BaseModel):
    name: str
    connector: str

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        problem = name_problem("compute", v)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("connector")
    @classmethod
    def _connector(cls, v: str) -> str:
        problem = connector_problem(v)
        if problem:
            raise ValueError(problem)
        # Paths are joined onto it, so one canonical form without the trailing slash.
        return v.rstrip("/")


# ---- the compute registry ---------------------------------------------------


class RegistryInit(BaseModel):
    # Carried over by continue-as-new (and seeded from the last run if one ended).
    computes: list[Compute] = Field(default_factory=list)


class ComputeBatch(BaseModel):
    computes: list[Compute]


class BatchResult(BaseModel):
    added: list[str] = Field(default_factory=list)
    # Already defined: a definitions file never overwrites them.
    kept: list[str] = Field(default_factory=list)


# ---- operations on a service ------------------------------------------------


class Direction(StrEnum):
    OUT = "out"
    IN = "in"


class ServiceOpInput(BaseModel):
    op_id: str
    service: str
    compute: Compute
    direction: Direction
    # None: one resource more ("out") or less ("in") than the connector runs when the
    # operation's turn comes. A number: that absolute count (reconciliation).
    target: int | None = Field(default=None, ge=0, le=MAX_RESOURCES)
    reason: str = "api"
    # Started by a service entity: wait for its ``go`` signal before acting.
    queued: bool = False


# ---- connector activities -----------------------------------------------------

Protocol = Literal["v2", "v1"]


class ServiceOpResult(BaseModel):
    running: int | None = None
    protocol: Protocol | None = None


class ConnectorCall(BaseModel):
    service: str
    compute: Compute


class StatusResult(ActivityReport):
    protocol: Protocol
    # None when the connector speaks only v1, which has no status route.
    running: int | None = None


class ScaleCall(ConnectorCall):
    number: int = Field(ge=0, le=MAX_RESOURCES)


class ScaleResult(ActivityReport):
    # False: the connector has no scale route (v1 only); nothing was changed.
    applied: bool
    running: int | None = None


class StepCall(ConnectorCall):
    action: Literal["start", "kill"]


class StepResult(ActivityReport):
    running: int


# ---- the service entity ---------------------------------------------------------


class StepRequest(BaseModel):
    direction: Direction
    compute: Compute


class DesiredRequest(BaseModel):
    number: int = Field(ge=0, le=MAX_RESOURCES)
    # None: the compute the service last used.
    compute: Compute | None = None


class ServiceInit(BaseModel):
    name: str
    period_s: float = Field(default=RECONCILE_PERIOD_S, gt=0, le=86_400)
    # Carried over by continue-as-new.
    compute: Compute | None = None
    desired: int | None = None
    observed: int | None = None
    observed_at: datetime | None = None
    protocol: Protocol | None = None
    last_error: str | None = None
    corrections: list[str] = Field(default_factory=list)


class ServiceView(BaseModel):
    service: str
    compute: str | None
    connector: str | None
    desired: int | None
    running_resources: int | None
    observed_at: datetime | None
    protocol: Protocol | None
    last_error: str | None
    period_s: float
    running: str | None
    queue: list[str]
    corrections: list[str]
