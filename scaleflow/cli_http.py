"""How the ``scaleflow`` verbs call the API: the bearer token on every call, an
``X-Request-ID`` on every change, and retries that never do a change twice.

A change carries one request id (uuid4, or the operator's ``--request-id``) through all
its attempts; the API answers a repeated id with its first answer (the pool's entity
dedupes by it), so a change whose answer was lost can be sent again safely.

What is retried:

- a connection that could not be made, and 429 (turned away before the update entered
  Temporal): nothing was done, for every request;
- a timeout, a dropped connection and 503: the request may have been served, so only
  for reads and for changes the API dedupes by request id (``repeatable``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

# Not imported from scaleflow.api.auth's READ_METHODS on purpose: the same set, but the
# CLI only needs the words.
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
REQUEST_ID_HEADER = "X-Request-ID"
# Statuses that mean "come back later": 429 always retried, 503 when repeatable.
BUSY = 429
UNAVAILABLE = 503
DEFAULT_ATTEMPTS = 5
DEFAULT_BACKOFF_S = (0.5, 1.0, 2.0, 4.0)
MAX_RETRY_AFTER_S = 10.0


class Unreachable(Exception):
    """No answer from the API, after every attempt."""


@dataclass(frozen=True)
class Reply:
    method: str
    path: str
    status: int
    body: Any  # the parsed JSON, or the text when the answer is not JSON
    request_id: str | None
    attempts: int

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def error_message(self) -> str:
        """The message of an error answer, whichever surface's format it is in."""
        return error_message(self.body) or f"HTTP {self.status}"


def error_message(body: Any) -> str | None:
    """``{"Error"}`` (chemtrail, scaleflow), ``{"message"}`` (genisys, broker),
    ``{"error": {"message"}}`` (memcache manager and auto-scaler)."""
    if isinstance(body, str):
        return body.strip() or None
    if not isinstance(body, dict):
        return None
    for key in ("Error", "message"):
        if isinstance(body.get(key), str):
            return str(body[key])
    err = body.get("error")
    if isinstance(err, dict) and isinstance(err.get("message"), str):
        return str(err["message"])
    if isinstance(err, str):
        return err
    return None


def _parse(resp: httpx.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return resp.text


def _retry_after(resp: httpx.Response) -> float | None:
    try:
        return min(float(resp.headers.get("Retry-After", "")), MAX_RETRY_AFTER_S)
    except ValueError:
        return None


class ApiClient:
    """One API, one HTTP connection pool; a context manager."""

    def __init__(
        self,
        base_url: str,
        headers: Mapping[str, str] | None = None,
        *,
        timeout_s: float = 30.0,
        attempts: int = DEFAULT_ATTEMPTS,
        backoff_s: tuple[float, ...] = DEFAULT_BACKOFF_S,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.attempts = max(1, attempts)
        self.backoff_s = backoff_s or (0.0,)
        self.sleep = sleep
        self.http = httpx.Client(
            base_url=self.base_url,
            headers=dict(headers or {}),
            timeout=timeout_s,
            transport=transport,
        )

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _delay(self, attempt: int) -> float:
        return self.backoff_s[min(attempt - 1, len(self.backoff_s) - 1)]

    def get(self, path: str, params: Mapping[str, Any] | None = None) -> Reply:
        return self.request("GET", path, params=params)

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        request_id: str | None = None,
        repeatable: bool | None = None,
    ) -> Reply:
        """Send the request, retrying as the module says; raise :class:`Unreachable`
        when no attempt got an answer.

        ``repeatable``: a repeat of this request does no harm even if the first was
        served (default: true for reads, false for changes; pass true for changes the
        API dedupes by ``X-Request-ID``)."""
        method = method.upper()
        mutating = method not in READ_METHODS
        if repeatable is None:
            repeatable = not mutating
        headers: dict[str, str] = {}
        if mutating:
            # One id for every attempt: that is what makes a retry safe.
            request_id = request_id or str(uuid.uuid4())
            headers[REQUEST_ID_HEADER] = request_id
        else:
            request_id = None
        last: Reply | Exception | None = None
        for attempt in range(1, self.attempts + 1):
            wait = self._delay(attempt)
            try:
                resp = self.http.request(method, path, json=json, params=params, headers=headers)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                last = exc  # never sent: always safe to send again
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                if not repeatable:
                    # It may have been served: a repeat could do it twice.
                    raise Unreachable(
                        f"{method} {self.base_url}{path}: {type(exc).__name__}: {exc} "
                        "(not sent again: the API may have done it; check before repeating)"
                    ) from exc
                last = exc
            else:
                last = Reply(method, path, resp.status_code, _parse(resp), request_id, attempt)
                busy = resp.status_code == BUSY
                if not (busy or (resp.status_code == UNAVAILABLE and repeatable)):
                    return last
                wait = _retry_after(resp) or wait
            if attempt < self.attempts:
                self.sleep(wait)
        if isinstance(last, Reply):
            return last  # still busy after every attempt: the caller shows the answer
        raise Unreachable(f"{method} {self.base_url}{path}: {type(last).__name__}: {last}")
