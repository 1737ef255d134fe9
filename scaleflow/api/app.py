"""The FastAPI app factory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

from fastapi import FastAPI
from pydantic import BaseModel
from starlette.datastructures import State
from starlette.types import ASGIApp, Receive, Scope, Send
from temporalio.client import Client

from scaleflow.api import auth, computes_file, errors, limits, metrics
from scaleflow.api.events import EventStore
from scaleflow.api.routes import (
    broker,
    chemtrail,
    dashboard,
    genisys,
    memcache,
    pools,
    progress,
)
from scaleflow.api.schemas.broker import DetailedErrorBody
from scaleflow.api.schemas.errors import ChemtrailError, GenisysError, MemcacheError
from scaleflow.core.settings import Settings
from scaleflow.temporal import connect

# Each surface's error format, by path prefix; the longest matching prefix wins.
ERROR_FORMATS: dict[str, errors.Formatter] = {
    "/": errors.chemtrail_error,  # scaleflow's own routes
    "/v1/scale": chemtrail.chemtrail_error,
    "/v1/policy": chemtrail.chemtrail_error,
    "/compute": genisys.genisys_error,
    "/service": genisys.genisys_error,
    "/api/scaler": memcache.memcache_error,
    "/api/manager": memcache.memcache_error,
    "/api/poolsize": memcache.memcache_error,
    "/api/v2": broker.broker_error,
}
# The same table, as the bodies the OpenAPI document shows (``errors.document_errors``).
ERROR_MODELS: dict[str, type[BaseModel]] = {
    "/": ChemtrailError,
    "/compute": GenisysError,
    "/service": GenisysError,
    "/api/scaler": MemcacheError,
    "/api/manager": MemcacheError,
    "/api/poolsize": MemcacheError,
    "/api/v2": DetailedErrorBody,
}


def update_limiter(settings: Settings) -> limits.UpdateLimiter:
    """The per-entity bound on in-flight updates."""
    return limits.UpdateLimiter(
        max_inflight=settings.max_inflight_updates, wait_s=settings.update_wait_s
    )


class RequestCounter:
    """Counts the HTTP requests served (the status document's ``scaleflow.http.requests``).

    A plain ASGI middleware: Starlette's ``BaseHTTPMiddleware`` (``@app.middleware``)
    can answer 500 "No response returned" when a request's disconnect races its
    response on a loaded machine, and it costs a task group per request."""

    def __init__(self, app: ASGIApp, state: State) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.state.requests += 1
        await self.app(scope, receive, send)


def create_app(settings: Settings | None = None, client: Client | None = None) -> FastAPI:
    """The API; it connects to Temporal at start-up unless given a ``client``."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        conn = client or await connect(settings, attempts=60)
        app.state.client = conn
        limits.attach(conn, update_limiter(settings))
        app.state.events = EventStore(conn, timedelta(hours=settings.event_retention_hours))
        # In the background: the registry's update waits for a worker, which may start
        # after the API; failures are logged, never fatal.
        loading = asyncio.create_task(computes_file.load_quietly(conn, settings))
        yield
        loading.cancel()

    app = FastAPI(title="scaleflow", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.broker_name = settings.broker_name
    app.state.requests = 0

    app.add_middleware(RequestCounter, state=app.state)

    errors.install(app, ERROR_FORMATS)
    errors.document_errors(app, ERROR_MODELS)
    # One check in front of every surface; its 401 uses the table installed above.
    auth.install(app, settings)
    app.include_router(chemtrail.router)
    app.include_router(pools.router)
    app.include_router(progress.router)
    app.include_router(genisys.router)
    app.include_router(memcache.router)
    app.include_router(broker.router)
    app.include_router(dashboard.router)
    # Last, so that its middleware is the outermost: it sees every answer's status.
    metrics.install(app)
    return app
