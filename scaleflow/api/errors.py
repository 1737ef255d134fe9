"""Each surface answers errors in its seed's format; nothing escapes as a bare 500."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from temporalio.client import RPCTimeoutOrCancelledError, WorkflowQueryFailedError
from temporalio.service import RPCError, RPCStatusCode

from scaleflow.api.limits import DEFAULT_RETRY_AFTER_S, UpdateBusyError, is_transient_refusal
from scaleflow.api.schemas.errors import INVALID
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


METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> list[str]:
    """The methods some route of the app serves at the request's path."""
    allowed = []
    for method in METHODS:
        scope = {**request.scope, "method": method}
        if any(r.matches(scope)[0] == Match.FULL for r in request.app.router.routes):
            allowed.append(method)
    return allowed


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
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # Starlette names the methods of the first route that matched the path only;
            # a path served by several routes (GET and DELETE, say) allows them all.
            headers["Allow"] = ", ".join(allowed_methods(request)) or headers.get("Allow", "")
        return error_response(request, exc.status_code, str(exc.detail), headers)

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


# FastAPI's own answer to a validation error, which no route here gives (``_invalid``).
_FASTAPI_VALIDATION = "#/components/schemas/HTTPValidationError"


def document_errors(app: FastAPI, models: Mapping[str, type[BaseModel]]) -> None:
    """The OpenAPI document says what ``install`` answers: FastAPI lists 422
    ``{"detail"}`` on routes with parameters or a body, where the app answers 400 in the
    surface's format. That 422 is taken out, and every route that reads parameters or a
    body lists a 400: its own, or the surface's (``models``: path prefix -> body, the
    longest prefix wins)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for path, operations in schema.get("paths", {}).items():
            prefix = max((p for p in models if path.startswith(p)), key=len)
            for operation in operations.values():
                if _document_invalid(operation, models[prefix].__name__):
                    _add_component(components, models[prefix])
                _errors_are_json(operation)
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _add_component(components: dict[str, Any], model: type[BaseModel]) -> None:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, sub in schema.pop("$defs", {}).items():
        components.setdefault(name, sub)
    components.setdefault(model.__name__, schema)


def _errors_are_json(operation: dict[str, Any]) -> None:
    """Errors are JSON on every route: FastAPI files their bodies under the media type of
    the route's own answer (text/plain for the broker's version)."""
    for status, doc in operation.get("responses", {}).items():
        content = doc.get("content", {})
        if (status[0] in "45" or status == "default") and "application/json" not in content:
            doc["content"] = {"application/json": next(iter(content.values()))} if content else {}


def _document_invalid(operation: dict[str, Any], model: str) -> bool:
    """True if the operation's 400 now refers to ``model``."""
    responses: dict[str, Any] = operation.setdefault("responses", {})
    doc = responses.get("422", {})
    schema = doc.get("content", {}).get("application/json", {}).get("schema", {})
    if schema.get("$ref") == _FASTAPI_VALIDATION:
        del responses["422"]
    reads = operation.get("parameters") or operation.get("requestBody")
    if not reads or "400" in responses:
        return False
    responses["400"] = {
        "description": INVALID,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model}"}}},
    }
    return True
