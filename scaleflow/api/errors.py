"""Each surface answers errors in its seed's format; nothing escapes as a bare 500."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from temporalio.service import RPCError, RPCStatusCode

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


# Surfaces register their formats by path prefix; the longest prefix wins.
_FORMATS: dict[str, Formatter] = {"/": chemtrail_error}


def register_format(prefix: str, formatter: Formatter) -> None:
    _FORMATS[prefix] = formatter


def error_response(request: Request, status: int, message: str) -> JSONResponse:
    path = request.url.path
    prefix = max((p for p in _FORMATS if path.startswith(p)), key=len)
    return JSONResponse(_FORMATS[prefix](status, message), status_code=status)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body", "query", "path"))
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        value = err.get("input")
        shown = "" if isinstance(value, dict | list) or value is None else f" (got {value!r})"
        parts.append(f"{loc or 'body'}: {msg}{shown}")
    return "invalid request: " + "; ".join(parts)


def install(app: FastAPI) -> None:
    @app.exception_handler(ScaleflowError)
    async def _scaleflow(request: Request, exc: ScaleflowError) -> JSONResponse:
        return error_response(request, STATUS_BY_KIND.get(exc.kind, 400), exc.message)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(request, 400, _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(request, exc.status_code, str(exc.detail))

    @app.exception_handler(RPCError)
    async def _rpc(request: Request, exc: RPCError) -> JSONResponse:
        log.warning("temporal rpc failed: %s %s", exc.status, exc.message)
        if exc.status in (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED):
            return error_response(request, 503, f"Temporal is unavailable: {exc.message}")
        return error_response(request, 502, f"Temporal refused the request: {exc.message}")
