"""The genisys connector protocol over HTTP (httpx).

Newer generation (v2), which the control plane speaks:

- ``GET  {connector}/service/{name}/status`` → ``{"service", "running_resources": n}``
- ``POST {connector}/service/{name}/scale`` ``{"number": n}`` → the same shape

Older generation (v1), the fallback:

- ``GET {connector}/service/{name}/start`` and ``/kill`` → the same shape

Errors are JSON ``{"message": ...}`` (404 unknown service, 409 kill with none running,
400 bad body, 502 start failure).

**When we fall back to v1.** A v2 connector answers an unknown *service* with 404 and a
JSON ``message``. A connector that lacks the *route* answers 404 or 405 with anything
else: Flask's HTML page, FastAPI's ``{"detail": "Not Found"}``, an empty body. So a 404
or 405 without a JSON ``message`` means "no such route" and selects v1; with one, it is
the connector's refusal and the operation fails with that message.

**Which errors are retried.** Activities raise ``retryable`` for what time can fix and
``fatal`` (non-retryable) for what it cannot:

- the connector is unreachable (connection refused, DNS, connect timeout): retryable,
  until the operation's schedule-to-close ends: the request never reached it;
- a 4xx: fatal, with the connector's message: it refused, and asking again will not help;
- a 5xx: retryable for ``SERVER_ERROR_ATTEMPTS`` attempts, then fatal with its message:
  a connector whose backend fails (502 start failure) may recover, but not forever;
- an answer that is not the protocol's JSON: fatal, the connector is broken.

``/scale`` takes an absolute number, so retrying it is safe. ``/start`` and ``/kill``
are not idempotent: a retry after a lost answer may act twice. That is the v1
protocol's limitation; to narrow it, a v1 call whose request may have reached the
connector (a read timeout, a dropped connection) is not retried but fails, saying the
outcome is unknown. A worker that dies between sending and recording can still cause
a repeat: only a v2 connector avoids that.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx
from pydantic import BaseModel, Field, ValidationError
from temporalio import activity

from scaleflow.activities.notes import fatal, note, retryable
from scaleflow.core.genisys import (
    MAX_RESOURCES,
    ConnectorCall,
    ScaleCall,
    ScaleResult,
    StatusResult,
    StepCall,
    StepResult,
)

log = logging.getLogger(__name__)

SERVER_ERROR_ATTEMPTS = 5
TIMEOUT = httpx.Timeout(20.0, connect=5.0)


class ConnectorAnswer(BaseModel):
    service: str | None = None
    # Strict: a count sent as "2" or 2.5 is a broken connector, not a number to guess.
    running_resources: int = Field(ge=0, le=MAX_RESOURCES, strict=True)


def _plural(n: int) -> str:
    return f"{n} resource" + ("" if n == 1 else "s")


def _json_message(resp: httpx.Response) -> str | None:
    try:
        body = resp.json()
    except ValueError:
        return None
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"]
    return None


def _route_missing(resp: httpx.Response) -> bool:
    return resp.status_code in (404, 405) and _json_message(resp) is None


class ConnectorClient:
    """One call to a compute's connector, with the error policy above.

    Errors are raised ``from None``: the message says what happened, and httpx's chain
    of causes and stack traces would only bloat every failed attempt recorded by Temporal
    (past its failure size limit, which hides the message behind "Failure exceeds size
    limit")."""

    def __init__(self, call: ConnectorCall, transport: httpx.AsyncBaseTransport | None = None):
        self.call = call
        self.source = call.compute.name
        self.transport = transport

    def url(self, action: str) -> str:
        return f"{self.call.compute.connector}/service/{self.call.service}/{action}"

    async def request(
        self, method: str, action: str, body: dict[str, Any] | None = None, *, resend: bool = True
    ) -> httpx.Response:
        url = self.url(action)
        try:
            async with httpx.AsyncClient(timeout=TIMEOUT, transport=self.transport) as http:
                return await http.request(method, url, json=body)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise retryable(
                f"connector of compute {self.source} is unreachable at "
                f"{self.call.compute.connector}: {exc or type(exc).__name__}",
                self.source,
            ) from None
        except httpx.TransportError as exc:
            reason = str(exc) or type(exc).__name__
            if not resend:
                raise fatal(
                    f"connector of compute {self.source} did not answer {method} {url} "
                    f"({reason}); it may or may not have acted, and this v1 call is not "
                    "idempotent, so it is not repeated",
                    self.source,
                ) from None
            raise retryable(
                f"connector of compute {self.source} did not answer {method} {url}: {reason}",
                self.source,
            ) from None

    def answer(self, resp: httpx.Response) -> ConnectorAnswer:
        """The protocol's answer from a 2xx, or the error the status calls for."""
        label = f"{resp.request.method} {resp.request.url}"
        if resp.status_code >= 400:
            message = _json_message(resp) or resp.text.strip()[:500] or resp.reason_phrase
            text = f"connector of compute {self.source} answered {resp.status_code}: {message}"
            if resp.status_code >= 500 and activity.info().attempt < SERVER_ERROR_ATTEMPTS:
                raise retryable(text, self.source)
            raise fatal(text, self.source)
        try:
            return ConnectorAnswer.model_validate_json(resp.content)
        except ValidationError:
            raise fatal(
                f"connector of compute {self.source} answered {label} with "
                f"{resp.text[:200]!r}, not {{'service', 'running_resources'}}",
                self.source,
            ) from None


class ConnectorActivities:
    def __init__(self, transport: httpx.AsyncBaseTransport | None = None) -> None:
        # A transport can be given to tests; real calls use httpx's default.
        self.transport = transport

    @activity.defn(name="connector_status")
    async def connector_status(self, call: ConnectorCall) -> StatusResult:
        client = ConnectorClient(call, self.transport)
        resp = await client.request("GET", "status")
        if _route_missing(resp):
            log.info("compute %s: no status route, speaking v1", call.compute.name)
            return StatusResult(
                protocol="v1",
                events=[
                    note(
                        f"connector of compute {call.compute.name} has no status route "
                        f"(HTTP {resp.status_code}): using its start/kill protocol",
                        call.compute.name,
                    )
                ],
            )
        running = client.answer(resp).running_resources
        return StatusResult(
            protocol="v2",
            running=running,
            events=[
                note(
                    f"service {call.service} runs {_plural(running)} on compute "
                    f"{call.compute.name}",
                    call.compute.name,
                )
            ],
        )

    @activity.defn(name="connector_scale")
    async def connector_scale(self, call: ScaleCall) -> ScaleResult:
        client = ConnectorClient(call, self.transport)
        resp = await client.request("POST", "scale", {"number": call.number})
        if _route_missing(resp):
            return ScaleResult(applied=False)
        running = client.answer(resp).running_resources
        return ScaleResult(
            applied=True,
            running=running,
            events=[
                note(
                    f"compute {call.compute.name} scaled service {call.service} to "
                    f"{_plural(call.number)}; it runs {running}",
                    call.compute.name,
                )
            ],
        )

    @activity.defn(name="connector_step")
    async def connector_step(self, call: StepCall) -> StepResult:
        client = ConnectorClient(call, self.transport)
        resp = await client.request("GET", call.action, resend=False)
        running = client.answer(resp).running_resources
        verb = "started" if call.action == "start" else "killed"
        return StepResult(
            running=running,
            events=[
                note(
                    f"compute {call.compute.name} {verb} a resource of service "
                    f"{call.service}; it runs {running}",
                    call.compute.name,
                )
            ],
        )

    def all(self) -> list[object]:
        return [self.connector_status, self.connector_scale, self.connector_step]
