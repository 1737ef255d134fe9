"""The CLI's request function: one X-Request-ID through every attempt, and no repeat
of a change the API might have done already (no server: an httpx mock transport)."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import httpx
import pytest

from scaleflow.cli_http import REQUEST_ID_HEADER, ApiClient, Unreachable, error_message

Handler = Callable[[httpx.Request], httpx.Response]


def client(handler: Handler, attempts: int = 5) -> tuple[ApiClient, list[float]]:
    waits: list[float] = []
    api = ApiClient(
        "http://api.test",
        {"Authorization": "Bearer t0k"},
        attempts=attempts,
        transport=httpx.MockTransport(handler),
        sleep=waits.append,  # no real waiting; the waits are recorded
    )
    return api, waits


def failing(outcomes: list[httpx.Response | Exception], seen: list[httpx.Request]) -> Handler:
    """Answers (or raises) each outcome in turn, recording every request."""

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        outcome = outcomes[min(len(seen) - 1, len(outcomes) - 1)]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    return handler


@pytest.mark.parametrize(
    "first",
    [
        httpx.ReadTimeout("read timed out"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        httpx.ConnectError("connection refused"),
        httpx.Response(503, json={"Error": "Temporal is unavailable", "Code": 503}),
        httpx.Response(429, json={"Error": "busy", "Code": 429}, headers={"Retry-After": "2"}),
    ],
    ids=["timeout", "dropped", "refused", "503", "429"],
)
def test_a_retried_change_keeps_its_request_id(first: httpx.Response | Exception) -> None:
    seen: list[httpx.Request] = []
    api, waits = client(failing([first, first, httpx.Response(201, json={"ID": "op-1"})], seen))
    with api:
        reply = api.request("POST", "/v1/scale/out/web", repeatable=True)
    assert reply.status == 201 and reply.body == {"ID": "op-1"} and reply.attempts == 3
    ids = {r.headers[REQUEST_ID_HEADER] for r in seen}
    assert len(seen) == 3 and len(ids) == 1
    assert reply.request_id in ids and uuid.UUID(reply.request_id or "").version == 4
    assert all(r.headers["Authorization"] == "Bearer t0k" for r in seen)
    if isinstance(first, httpx.Response) and first.status_code == 429:
        assert waits == [2.0, 2.0]  # Retry-After is honoured


def test_each_change_gets_its_own_request_id_and_reads_none() -> None:
    seen: list[httpx.Request] = []
    api, _ = client(failing([httpx.Response(201, json={"ID": "x"})], seen))
    with api:
        api.request("POST", "/v1/scale/out/web", repeatable=True)
        api.request("POST", "/v1/scale/out/web", repeatable=True)
        api.request("POST", "/v1/scale/out/web", request_id="mine", repeatable=True)
        api.get("/v1/pools")
    ids = [r.headers.get(REQUEST_ID_HEADER) for r in seen]
    assert ids[0] != ids[1] and ids[2] == "mine" and ids[3] is None


@pytest.mark.parametrize(
    "failure",
    [httpx.ReadTimeout("read timed out"), httpx.RemoteProtocolError("dropped")],
    ids=["timeout", "dropped"],
)
def test_a_change_that_may_have_happened_is_not_repeated_unless_deduped(
    failure: Exception,
) -> None:
    seen: list[httpx.Request] = []
    api, _ = client(failing([failure, httpx.Response(201, json={"ID": "x"})], seen))
    with api, pytest.raises(Unreachable, match="not sent again"):
        api.request("POST", "/service/web/upscale", json={"compute": "c"})
    assert len(seen) == 1


def test_503_is_not_repeated_for_a_change_that_is_not_deduped() -> None:
    seen: list[httpx.Request] = []
    busy = httpx.Response(503, json={"message": "down"})
    api, _ = client(failing([busy, httpx.Response(201, json={"ID": "x"})], seen))
    with api:
        reply = api.request("POST", "/service/web/upscale", json={"compute": "c"})
    assert reply.status == 503 and len(seen) == 1 and reply.error_message() == "down"


def test_a_connection_that_was_never_made_is_retried_for_any_change() -> None:
    seen: list[httpx.Request] = []
    refused = httpx.ConnectError("connection refused")
    api, _ = client(failing([refused, httpx.Response(201, json={"ID": "x"})], seen))
    with api:
        assert api.request("POST", "/compute", json={}).status == 201
    assert len(seen) == 2


def test_unreachable_after_every_attempt() -> None:
    seen: list[httpx.Request] = []
    api, waits = client(failing([httpx.ConnectError("connection refused")], seen), attempts=3)
    with api, pytest.raises(Unreachable, match="ConnectError"):
        api.get("/v1/pools")
    assert len(seen) == 3 and len(waits) == 2


def test_still_busy_after_every_attempt_is_the_last_answer() -> None:
    seen: list[httpx.Request] = []
    api, _ = client(failing([httpx.Response(429, json={"Error": "busy"})], seen), attempts=2)
    with api:
        reply = api.request("POST", "/v1/scale/out/web", repeatable=True)
    assert reply.status == 429 and not reply.ok and len(seen) == 2


def test_error_messages_of_every_surface() -> None:
    assert error_message({"Error": "no class", "Code": 404}) == "no class"
    assert error_message({"message": "Undefined compute: x."}) == "Undefined compute: x."
    manager = {"success": "false", "error": {"code": 404, "message": "no pool"}}
    assert error_message(manager) == "no pool"
    assert error_message({"error": "CLUSTER_NOT_FOUND"}) == "CLUSTER_NOT_FOUND"
    assert error_message("plain text\n") == "plain text"
    assert error_message([1]) is None
