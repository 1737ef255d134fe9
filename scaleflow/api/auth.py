"""API tokens: with ``SCALEFLOW_API_TOKEN`` set, changes need ``Authorization: Bearer``.

One pure ASGI middleware guards every route, whatever its surface: the mutating methods
always, the reads too when ``SCALEFLOW_API_READ_TOKEN_REQUIRED`` is true. A refusal is
401 with ``WWW-Authenticate: Bearer``, in the error format of the surface the path
belongs to (the app's table from ``errors.install``), so a chemtrail client reads
``{"Error", "Code"}`` and a broker client ``{"error": "UNAUTHORIZED"}``.

The token lives in a ``SecretStr`` and is only ever compared, never logged: the access
log shows the request line, the header is not in it, and no message here names the
token a client sent.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from typing import TYPE_CHECKING

from scaleflow.core.settings import Settings

if TYPE_CHECKING:
    # Only for hints: the CLI imports this module for ``auth_headers`` and ``check_bind``
    # and should not pay for FastAPI and the Temporal SDK (half a second) to send a call.
    from fastapi import FastAPI
    from starlette.types import ASGIApp, Receive, Scope, Send

# Methods that change nothing; every other method (POST, PUT, PATCH, DELETE, and any
# unknown one) counts as mutating, so a method nobody thought of is guarded too.
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CHALLENGE = 'Bearer realm="scaleflow"'
MISSING = "authentication required: send Authorization: Bearer <SCALEFLOW_API_TOKEN>"
WRONG = "invalid token: the bearer token does not match SCALEFLOW_API_TOKEN"
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def _digest(value: bytes) -> bytes:
    # Compared as digests of equal length, so the comparison leaks no length either.
    return hashlib.sha256(value).digest()


def token_matches(expected: str, offered: bytes) -> bool:
    """Constant-time: the time taken does not depend on where the two differ."""
    return hmac.compare_digest(_digest(expected.encode()), _digest(offered))


def bearer(scope: Scope) -> bytes | None:
    """The credentials of the first ``Authorization: Bearer ...`` header, raw."""
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, credentials = value.strip().partition(b" ")
            if scheme.lower() == b"bearer" and credentials.strip():
                return credentials.strip()
            return None
    return None


class TokenMiddleware:
    """Refuses unauthenticated requests before any route (or body parsing) runs."""

    def __init__(self, app: ASGIApp, token: str, reads_too: bool = False) -> None:
        self.app = app
        self.token = token
        self.reads_too = reads_too

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.guarded(scope["method"]):
            await self.app(scope, receive, send)
            return
        offered = bearer(scope)
        if offered is not None and token_matches(self.token, offered):
            await self.app(scope, receive, send)
            return
        from starlette.requests import Request

        from scaleflow.api import errors

        # The Request only reads the scope here: scope["app"] (set by Starlette before
        # any middleware) carries the error table, so the 401 is in the surface's format.
        request = Request(scope)
        challenge = CHALLENGE if offered is None else CHALLENGE + ', error="invalid_token"'
        response = errors.error_response(
            request, 401, MISSING if offered is None else WRONG, {"WWW-Authenticate": challenge}
        )
        await response(scope, receive, send)

    def guarded(self, method: str) -> bool:
        return self.reads_too or method.upper() not in READ_METHODS


def install(app: FastAPI, settings: Settings) -> None:
    """Guard ``app`` when a token is configured; without one the API stays open (and
    ``check_bind`` keeps it on loopback)."""
    if settings.api_token is None:
        return
    app.add_middleware(
        TokenMiddleware,
        token=settings.api_token.get_secret_value(),
        reads_too=settings.api_read_token_required,
    )


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 (bracketed or not) and localhost; never 0.0.0.0 or a name."""
    host = host.strip().removeprefix("[").removesuffix("]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False  # another host name: it may resolve to anything
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


class UnsafeBindError(SystemExit):
    """The API would serve its unguarded routes beyond this machine."""


def check_bind(settings: Settings) -> None:
    """Refuse to serve beyond loopback without a token: every change would be open to
    anyone who can reach the port (``DELETE /api/manager/data/clear`` empties the data)."""
    if settings.api_token is None and not is_loopback(settings.api_host):
        raise UnsafeBindError(
            f"scaleflow: refusing to serve the API on {settings.api_host!r} without a token: "
            "every change would be open to anyone who can reach it. Set SCALEFLOW_API_TOKEN "
            "(clients send it as Authorization: Bearer <token>), or bind to loopback with "
            "SCALEFLOW_API_HOST=127.0.0.1."
        )


def auth_headers(settings: Settings) -> dict[str, str]:
    """What a client of this API sends: the bearer token, when one is configured."""
    if settings.api_token is None:
        return {}
    return {"Authorization": f"Bearer {settings.api_token.get_secret_value()}"}
