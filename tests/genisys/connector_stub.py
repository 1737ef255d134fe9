"""A TEST STUB of a genisys connector — not the reference connector.

``StubConnector`` serves the connector protocol over real HTTP on a loopback port,
keeping a running count per service in memory instead of containers:

- v2: ``GET /service/{name}/status`` and ``POST /service/{name}/scale {"number": n}``
- v1: ``GET /service/{name}/start`` and ``GET /service/{name}/kill``

Errors are ``{"message": ...}``: 404 unknown service, 409 kill with none running,
400 bad body. ``v1_only=True`` leaves the v2 routes out, so they answer FastAPI's own
404 (``{"detail": "Not Found"}``), as a connector of the older generation would.
"""

from __future__ import annotations

import threading
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from scaleflow.activities.processes import free_port
from tests.servers import ThreadedServer


class StubConnector:
    def __init__(self, services: dict[str, int] | None = None, *, v1_only: bool = False) -> None:
        self.counts: dict[str, int] = dict(services or {})
        self.v1_only = v1_only
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.port = 0
        self._http: ThreadedServer | None = None
        self.app = self._build()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, port: int | None = None) -> str:
        self.port = port or free_port()
        self._http = ThreadedServer(self.app, "the stub connector")
        self._http.start(self.port)
        return self.url

    def stop(self) -> None:
        if self._http is not None:
            self._http.stop()

    def paths(self) -> list[str]:
        with self.lock:
            return [f"{m} {p}" for m, p in self.requests]

    def _build(self) -> FastAPI:
        app = FastAPI(title="genisys connector TEST STUB", openapi_url=None, docs_url=None)
        stub = self

        def answer(name: str) -> JSONResponse:
            return JSONResponse({"service": name, "running_resources": stub.counts[name]})

        def unknown(name: str) -> JSONResponse:
            return JSONResponse({"message": f"Unknown service: {name}"}, status_code=404)

        @app.middleware("http")
        async def record(request: Request, call_next: Any) -> Any:
            with stub.lock:
                stub.requests.append((request.method, request.url.path))
            return await call_next(request)

        if not self.v1_only:

            @app.get("/service/{name}/status")
            def status(name: str) -> JSONResponse:
                with stub.lock:
                    return answer(name) if name in stub.counts else unknown(name)

            @app.post("/service/{name}/scale")
            async def scale(name: str, request: Request) -> JSONResponse:
                try:
                    number = (await request.json())["number"]
                except Exception:
                    number = None
                if not isinstance(number, int) or isinstance(number, bool) or number < 0:
                    return JSONResponse(
                        {"message": "Invalid body: expected {'number': n}"}, status_code=400
                    )
                with stub.lock:
                    if name not in stub.counts:
                        return unknown(name)
                    stub.counts[name] = number
                    return answer(name)

        @app.get("/service/{name}/start")
        def start(name: str) -> JSONResponse:
            with stub.lock:
                if name not in stub.counts:
                    return unknown(name)
                stub.counts[name] += 1
                return answer(name)

        @app.get("/service/{name}/kill")
        def kill(name: str) -> JSONResponse:
            with stub.lock:
                if name not in stub.counts:
                    return unknown(name)
                if stub.counts[name] == 0:
                    return JSONResponse(
                        {"message": f"No running resource of service {name} to kill"},
                        status_code=409,
                    )
                stub.counts[name] -= 1
                return answer(name)

        return app
