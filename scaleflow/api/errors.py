"""Each surface answers errors in its seed's format; nothing escapes as a bare 500."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from temporalio.client import RPCTimeoutOrCancelledError, WorkflowQueryFailedError
from temporalio.service import RPCError, RPCStatusCode

from scaleflow.api.limits import DEFAULT_RETRY_AFTER_S, UpdateBusyError, is_transient_refusal
from scaleflow.core.errors import ErrorKind, ScaleflowError

log = logging.getLogger(__name__)

STATUS_BY_KIND: dict[ErrorKind, int] = {
    ErrorKind.NO_POLICY: 422,
    ErrorKind.POLICY_DISABLED: 422,
    ErrorKind.NO_PROVIDER: 422,
    ErrorKind.NO_NODES: 422,
    ErrorKind.BOUNDS: 412,
    ErrorKind.INVALID: 400,
    ErrorKind.CONFLICT: 409,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.PROVIDER: 502,
}

Formatter = Callable[[int, str], dict[str, Any]]


def chemtrail_error(status: int, message: str) -> dict[str, Any]:
    return {"Error": message, "Code": status}


# Used when an app installed no table (or its table lacks "/").
DEFAULT_FORMATS: dict[str, Formatter] = {"/": chemtrail_error}


def error_response(
    request: Request, status: int, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """The error in the format of the surface the path belongs to: the longest prefix
    of the app's table (``install``) wins."""
    formats: dict[str, Formatter] = getattr(request.app.state, "error_formats", DEFAULT_FORMATS)
    path = request.url.path
    prefix = max((p for p in formats if path.startswith(p)), key=len)
    return JSONResponse(formats[prefix](status, message), status_code=status, headers=headers)


def busy_response(request: Request, message: str, retry_after_s: int) -> JSONResponse:
    return error_response(request, 429, message, {"Retry-After": str(retry_after_s)})


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body", "query", "path"))
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        value = err.get("input")
        shown = "" if isinstance(value, dict | list) or value is None else f" (got {value!r})"
        parts.append(f"{loc or 'body'}: {msg}{shown}")
    return "invalid request: " + "; ".join(parts)


def install(app: FastAPI, formats: Mapping[str, Formatter]) -> None:
    """Answer every error of ``app`` in its surface's format (prefix -> formatter)."""
    app.state.error_formats = {**DEFAULT_FORMATS, **formats}

    @app.exception_handler(ScaleflowError)
    async def _scaleflow(request: Request, exc: ScaleflowError) -> JSONResponse:
        return error_response(request, STATUS_BY_KIND.get(exc.kind, 400), exc.message)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(request, 400, _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(request, exc.status_code, str(exc.detail))

    @app.exception_handler(UpdateBusyError)
    async def _busy(request: Request, exc: UpdateBusyError) -> JSONResponse:
        log.warning("update turned away: %s", exc.message)
        return busy_response(request, exc.message, exc.retry_after_s)

    @app.exception_handler(WorkflowQueryFailedError)
    async def _query_failed(request: Request, exc: WorkflowQueryFailedError) -> JSONResponse:
        # The entity could not answer (e.g. its workflow task is failing): not our 500.
        log.warning("workflow query failed: %s", exc)
        return error_response(request, 503, f"the entity could not answer: {exc}")

    @app.exception_handler(RPCTimeoutOrCancelledError)
    async def _timeout(request: Request, exc: RPCTimeoutOrCancelledError) -> JSONResponse:
        # Raised by the SDK instead of an RPCError when a call's deadline passes.
        log.warning("temporal call timed out: %s", exc)
        return error_response(request, 503, f"Temporal did not answer in time: {exc}")

    @app.exception_handler(RPCError)
    async def _rpc(request: Request, exc: RPCError) -> JSONResponse:
        log.warning("temporal rpc failed: %s %s", exc.status, exc.message)
        if is_transient_refusal(exc):
            # Load, not a fault: the same request succeeds later.
            message = f"Temporal is busy: {exc.message}; retry later"
            return busy_response(request, message, DEFAULT_RETRY_AFTER_S)
        if exc.status in (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED):
            return error_response(request, 503, f"Temporal is unavailable: {exc.message}")
        return error_response(request, 502, f"Temporal refused the request: {exc.message}")
