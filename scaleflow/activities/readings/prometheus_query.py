"""A Prometheus instant query (``GET /api/v1/query``) whose answer is one number.

The answer must be a scalar or a vector of exactly one series, as nomad-autoscaler's
Prometheus plugin requires (wrap the query in ``sum()`` or ``scalar()`` otherwise).
Errors: Prometheus unreachable, 5xx (503: the query timed out), an empty answer or NaN
are retryable (the next round may differ); a query Prometheus refuses (400 bad_data,
422 execution), several series or another result type are not.
"""

from __future__ import annotations

import math
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from scaleflow.activities.notes import fatal, retryable
from scaleflow.core.autoscaling.readings import Reading, Readings
from scaleflow.core.autoscaling.source_io import PrometheusQueryInput
from scaleflow.core.errors import ErrorKind

SOURCE = "prometheus"


class _Data(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    result_type: str = Field(alias="resultType")
    result: Any = None


class _Answer(BaseModel):
    """Prometheus's documented envelope."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    status: str
    data: _Data | None = None
    error_type: str | None = Field(default=None, alias="errorType")
    error: str | None = None


def _value(pair: Any, query: str) -> float:
    """The number of a ``[timestamp, "1.5"]`` pair (Prometheus sends values as strings)."""
    try:
        value = float(pair[1])
    except (TypeError, ValueError, IndexError) as exc:
        raise retryable(f"prometheus answered {query!r} with a malformed sample", SOURCE) from exc
    if not math.isfinite(value):
        raise retryable(f"prometheus query {query!r} gave {pair[1]}, not a number", SOURCE)
    return value


def parse_answer(status_code: int, body: bytes, query: str) -> float:
    """The one number a query answered, or the activity error it deserves."""
    try:
        answer = _Answer.model_validate_json(body)
    except ValidationError as exc:
        what = f"prometheus answered {status_code} with no API response: {body[:200]!r}"
        if 400 <= status_code < 500 and status_code != 429:
            # Not Prometheus's API (a wrong address or path): retrying cannot fix it.
            raise fatal(what, SOURCE) from exc
        raise retryable(what, SOURCE) from exc
    if answer.status != "success" or status_code >= 400:
        why = f"{answer.error_type or status_code}: {answer.error or 'no detail'}"
        if status_code >= 500 or status_code == 429:
            raise retryable(f"prometheus could not run {query!r}: {why}", SOURCE)
        raise fatal(f"prometheus refused {query!r}: {why}", SOURCE, ErrorKind.INVALID)
    if answer.data is None:
        raise retryable(f"prometheus answered {query!r} with no data", SOURCE)
    kind, result = answer.data.result_type, answer.data.result
    if kind == "scalar":
        return _value(result, query)
    if kind != "vector":
        raise fatal(
            f"prometheus query {query!r} gave a {kind}; an instant vector or scalar is needed",
            SOURCE,
            ErrorKind.INVALID,
        )
    series = result or []
    if not series:
        raise retryable(f"prometheus query {query!r} returned no series", SOURCE)
    if len(series) > 1:
        raise fatal(
            f"prometheus query {query!r} returned {len(series)} series, only 1 is expected "
            "(aggregate it, e.g. with sum())",
            SOURCE,
            ErrorKind.INVALID,
        )
    return _value((series[0] or {}).get("value"), query)


def read_prometheus_query(req: PrometheusQueryInput) -> Readings:
    url = req.address.rstrip("/") + "/api/v1/query"
    try:
        resp = httpx.get(url, params={"query": req.query}, timeout=req.timeout_s)
    except httpx.TransportError as exc:
        detail = str(exc) or type(exc).__name__
        raise retryable(f"prometheus at {req.address} unreachable: {detail}", SOURCE) from exc
    value = parse_answer(resp.status_code, resp.content, req.query)
    metric = req.metric or req.query
    return Readings(readings=[Reading(metric=metric, value=value, unit=req.unit, source=SOURCE)])
