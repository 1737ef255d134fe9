"""The connector's HTTP API (both protocol generations) over one backend.

Every call for a service runs under that service's lock in a worker thread, so two
concurrent ``scale`` calls converge one after the other instead of both starting
the missing resources. Errors are ``{"message": ...}`` (except a missing route, see
below); nothing answers 500.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from scaleflow.connector.backends import Backend, BackendError, Ec2Backend, LocalBackend
from scaleflow.connector.models import (
    NAME_PATTERN,
    ServiceDefinition,
    ServicesFile,
    ServiceStatus,
    ServiceSummary,
    default_service,
)

log = logging.getLogger("scaleflow.connector")

T = TypeVar("T")

PROVIDERS = ("local", "aws-ec2")


class ConnectorError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"message": message}, status_code=status)


def parse_number(body: bytes, service: ServiceDefinition) -> int:
    """The ``number`` of a scale request body; ConnectorError(400) says what is wrong."""
    if not body.strip():
        raise ConnectorError(400, 'Request body is empty: expected {"number": n}.')
    try:
        data: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ConnectorError(400, "Request body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise ConnectorError(400, 'Request body must be a JSON object like {"number": 2}.')
    if "number" not in data:
        raise ConnectorError(400, "Missing parameter: number.")
    number = data["number"]
    # bool is an int in Python, but `true` is not a count.
    if isinstance(number, bool) or not isinstance(number, int):
        raise ConnectorError(400, f"Parameter number must be an integer, got {json.dumps(number)}.")
    if number < 0:
        raise ConnectorError(400, f"Parameter number must be >= 0, got {number}.")
    if number > service.max_resources:
        raise ConnectorError(
            400,
            f"Parameter number must be <= {service.max_resources} "
            f"(max_resources of service {service.name}), got {number}.",
        )
    return number


def create_connector_app(
    backend: Backend,
    services: Iterable[ServiceDefinition] | Mapping[str, ServiceDefinition] | ServicesFile,
    *,
    fallback: Callable[[str], ServiceDefinition] | None = None,
) -> FastAPI:
    """The connector app. A name not in ``services`` is 404 unless ``fallback`` defines it."""
    if isinstance(services, ServicesFile):
        defined = services.by_name()
    elif isinstance(services, Mapping):
        defined = dict(services)
    else:
        defined = {s.name: s for s in services}

    app = FastAPI(title="genisys connector", docs_url=None, redoc_url=None)
    locks: dict[str, threading.Lock] = {}
    locks_guard = threading.Lock()

    def lock_for(name: str) -> threading.Lock:
        with locks_guard:
            return locks.setdefault(name, threading.Lock())

    def resolve(name: str) -> ServiceDefinition:
        service = defined.get(name)
        if service is None and fallback is not None and re.match(NAME_PATTERN, name):
            service = fallback(name)
        if service is None:
            raise ConnectorError(404, f"Undefined service: {name}.")
        return service

    async def locked(service: ServiceDefinition, fn: Callable[[ServiceDefinition], T]) -> T:
        def run() -> T:
            with lock_for(service.name):
                try:
                    return fn(service)
                except ConnectorError:
                    raise
                except BackendError as exc:
                    raise ConnectorError(502, str(exc)) from exc
                except Exception as exc:
                    # A backend bug is still the backend's failure, not a bare 500.
                    log.exception("backend failed for service %s", service.name)
                    raise ConnectorError(502, f"backend error: {exc}") from exc

        return await run_in_threadpool(run)

    def status_of(service: ServiceDefinition) -> dict[str, Any]:
        count = len(backend.running(service))
        return ServiceStatus(service=service.name, running_resources=count).model_dump()

    # ---- newer generation -------------------------------------------------------

    @app.get("/service/{name}/status")
    async def status(name: str) -> dict[str, Any]:
        return await locked(resolve(name), status_of)

    @app.post("/service/{name}/scale")
    async def scale(name: str, request: Request) -> dict[str, Any]:
        service = resolve(name)
        number = parse_number(await request.body(), service)

        def converge(service: ServiceDefinition) -> dict[str, Any]:
            live = backend.running(service)
            while len(live) < number:
                try:
                    live.append(backend.start(service))
                except BackendError as exc:
                    raise ConnectorError(
                        502, f"{exc} (running_resources: {len(live)} of {number})"
                    ) from exc
                log.info("service %s: started %s", service.name, live[-1].id)
            # Newest first, as v1 kill does.
            for resource in reversed(live[number:]):
                backend.kill(service, resource)
                log.info("service %s: killed %s", service.name, resource.id)
            return status_of(service)

        return await locked(service, converge)

    # ---- older generation (v1) ----------------------------------------------------

    @app.get("/service/{name}/start")
    async def start(name: str) -> dict[str, Any]:
        def start_one(service: ServiceDefinition) -> dict[str, Any]:
            resource = backend.start(service)
            log.info("service %s: started %s", service.name, resource.id)
            return status_of(service)

        return await locked(resolve(name), start_one)

    @app.get("/service/{name}/kill")
    async def kill(name: str) -> dict[str, Any]:
        def kill_newest(service: ServiceDefinition) -> dict[str, Any]:
            live = backend.running(service)
            if not live:
                raise ConnectorError(409, f"No running resource for service {service.name}.")
            backend.kill(service, live[-1])
            log.info("service %s: killed %s", service.name, live[-1].id)
            return status_of(service)

        return await locked(resolve(name), kill_newest)

    # ---- for humans -------------------------------------------------------------------

    @app.get("/services")
    async def list_services() -> list[dict[str, Any]]:
        try:
            names = sorted(set(defined) | set(await run_in_threadpool(backend.services)))
        except BackendError as exc:
            raise ConnectorError(502, str(exc)) from exc
        out = []
        for name in names:
            # A name only the backend knows (a default service, or one dropped from the
            # file) is still listed: its resources are real.
            service = defined.get(name) or ServiceDefinition(name=name)

            def summary(service: ServiceDefinition) -> dict[str, Any]:
                live = backend.running(service)
                return ServiceSummary(
                    service=service.name, running_resources=len(live), resources=live
                ).model_dump(mode="json")

            out.append(await locked(service, summary))
        return out

    # ---- errors -------------------------------------------------------------------------

    @app.exception_handler(ConnectorError)
    async def _connector_error(_: Request, exc: ConnectorError) -> JSONResponse:
        return _error(exc.status, exc.message)

    # A missing route or method keeps FastAPI's `{"detail": ...}` on purpose: the control
    # plane reads a 404/405 *without* a `message` as "no such route" and falls back to v1,
    # and one *with* a `message` (an undefined service) as a refusal.

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(400, f"Invalid request: {exc.errors()}")

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error", exc_info=exc)
        return _error(502, f"connector error: {exc}")

    return app


def build_connector_app(
    provider: str,
    services_file: Path | None,
    state_dir: Path,
    *,
    memcached_bin: str = "memcached",
    aws_endpoint_url: str | None = None,
    aws_region: str = "us-east-1",
) -> FastAPI:
    """The app ``scaleflow connector`` serves; raises ValueError on a bad configuration.

    Without a services file the local provider runs any requested name as the default
    memcached service; with one, only the file's services exist.
    """
    services = ServicesFile.load(services_file) if services_file else ServicesFile()
    if provider == "local":
        backend: Backend = LocalBackend(state_dir, memcached_bin=memcached_bin)
        fallback = None if services_file else default_service
    elif provider == "aws-ec2":
        missing = [s.name for s in services.service if not s.image_id]
        if missing:
            raise ValueError(f"aws-ec2 services need an image_id: {', '.join(missing)}")
        backend = Ec2Backend(aws_endpoint_url, aws_region)
        fallback = None
    else:
        raise ValueError(f"unknown provider {provider!r} (expected one of {', '.join(PROVIDERS)})")
    return create_connector_app(backend, services, fallback=fallback)
