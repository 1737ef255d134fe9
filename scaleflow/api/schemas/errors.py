"""Each surface's error body, and the helpers that list a route's error answers in the
OpenAPI document.

The bodies themselves are built by ``api.errors`` (``error_response``, by path prefix)
and by the broker router; these models only describe them. Every surface answers a
request that is not what a route takes with **400** in its own format, never FastAPI's
422 ``{"detail"}`` (``api.errors.document_errors`` takes that one out of the document).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Responses = dict[int | str, dict[str, Any]]


class ChemtrailError(BaseModel):
    """chemtrail's ``{"Error", "Code"}``: the ``/v1`` routes, scaleflow's own included."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"Error": "no scaling policy found for class high-memory", "Code": 422}]
        }
    )

    Error: str = Field(description="What was wrong")
    Code: int = Field(description="The HTTP status, repeated")


class MemcacheErrorDetail(BaseModel):
    code: int = Field(description="The HTTP status, repeated")
    message: str


class MemcacheError(BaseModel):
    """The memcache auto-scaler's and manager app's failure envelope."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "success": "false",
                    "error": {
                        "code": 400,
                        "message": "Parameter change can only be increase or decrease",
                    },
                }
            ]
        }
    )

    success: Literal["false"]
    error: MemcacheErrorDetail


class GenisysError(BaseModel):
    """genisys' ``{"message"}``."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"message": "Missing parameters."}]})

    message: str


# What each status means on every surface; a route adds its own meanings.
UNAUTHORIZED = "SCALEFLOW_API_TOKEN is set and the bearer token is missing or wrong"
BUSY = "Too many changes in flight on the entity, or Temporal is busy: retry after Retry-After"
REFUSED = "Temporal refused the request"
UNAVAILABLE = "Temporal is unavailable or did not answer in time"
INVALID = "A path, query, header or body that is not what the route takes"


def error_docs(model: type[BaseModel], statuses: Mapping[int, str]) -> Responses:
    """``responses=`` entries: each status with the surface's body and its meaning."""
    return {status: {"model": model, "description": text} for status, text in statuses.items()}


def common_errors(model: type[BaseModel], *, busy: bool = True) -> Responses:
    """What any route of a surface may answer: a missing token, and Temporal's refusals
    (``busy`` for surfaces that answer load with 429). A route that reads parameters or a
    body lists its 400 (``api.errors.document_errors`` adds it where FastAPI validates)."""
    statuses = {401: UNAUTHORIZED}
    if busy:
        statuses[429] = BUSY
    statuses |= {502: REFUSED, 503: UNAVAILABLE}
    return error_docs(model, statuses)
