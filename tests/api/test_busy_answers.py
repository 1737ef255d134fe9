"""Bursts of updates through the real app: queued per entity, 429 with Retry-After in each
surface's format when a turn does not come, and 502/503 only for real failures."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.client import WorkflowUpdateRPCTimeoutOrCancelledError
from temporalio.service import RPCStatusCode

from scaleflow.api import limits
from scaleflow.core.genisys import REGISTRY_ID
from tests.api.fake_temporal import FakeTemporal, rpc, serve, settings_for

EXHAUSTED = rpc(
    RPCStatusCode.RESOURCE_EXHAUSTED,
    "limit on number of concurrent in-flight updates has been reached (10)",
)
ABORTED = rpc(RPCStatusCode.UNAVAILABLE, "workflow update was aborted")


def chemtrail_error(body: dict[str, Any]) -> str:
    assert set(body) == {"Error", "Code"} and body["Code"] == 429, body
    return body["Error"]


def memcache_error(body: dict[str, Any]) -> str:
    assert body["success"] == "false" and set(body) == {"success", "error"}, body
    assert set(body["error"]) == {"code", "message"} and body["error"]["code"] == 429, body
    return body["error"]["message"]


def genisys_error(body: dict[str, Any]) -> str:
    assert set(body) == {"message"}, body
    return body["message"]


@dataclass
class Surface:
    name: str
    method: str
    path: str
    body: dict[str, Any] | None
    ok: int
    workflow_id: str
    error: Callable[[dict[str, Any]], str]

    async def send(self, http: httpx.AsyncClient, request_id: str | None = None) -> httpx.Response:
        headers = {"X-Request-ID": request_id} if request_id else {}
        # The in-process transport has no timeouts: a request the API never answers
        # must fail the test, not hang it.
        async with asyncio.timeout(5):
            return await http.request(self.method, self.path, json=self.body, headers=headers)


SURFACES = [
    Surface("chemtrail", "POST", "/v1/scale/out/c1", None, 201, "pool/c1", chemtrail_error),
    Surface(
        "pools",
        "PUT",
        "/v1/pools/p1/cache-config",
        {"capacity_mb": 64},
        201,
        "pool/p1",
        chemtrail_error,
    ),
    Surface(
        "memcache",
        "POST",
        "/api/scaler/set_test_miss_rate",
        {"test_miss_rate": 0.5},
        200,
        "pool/default",
        memcache_error,
    ),
    Surface(
        "genisys",
        "POST",
        "/compute",
        {"name": "c1", "connector": "http://localhost:7051"},
        201,
        REGISTRY_ID,
        genisys_error,
    ),
]
BY_NAME = {s.name: s for s in SURFACES}


def retry_after(resp: httpx.Response) -> int:
    assert resp.status_code == 429, resp.text
    value = int(resp.headers["Retry-After"])
    assert value >= 1
    return value


async def until(cond: Callable[[], bool], timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not cond():
            await asyncio.sleep(0.002)


async def test_a_burst_on_one_pool_is_let_through_n_at_a_time(tmp_path: Path) -> None:
    fake = FakeTemporal()
    fake.release.clear()
    async with serve(settings_for(tmp_path, max_inflight_updates=3, update_wait_s=10), fake) as h:
        burst = [asyncio.create_task(BY_NAME["chemtrail"].send(h)) for _ in range(20)]
        limiter = limits.limiter_for(fake)  # type: ignore[arg-type]
        try:
            await until(lambda: fake.inside == 3 and limiter.users("pool/c1") == 20)
            await asyncio.sleep(0.05)  # time for a fourth to get in, were it let in
            assert fake.inside == 3
        finally:
            fake.release.set()  # a failing test must not leave requests hanging
        answers = await asyncio.gather(*burst)
    assert [r.status_code for r in answers] == [201] * 20, [r.text for r in answers]
    assert len({r.json()["ID"] for r in answers}) == 20
    assert fake.peak == 3


@pytest.mark.parametrize("surface", SURFACES, ids=lambda s: s.name)
async def test_no_turn_in_time_is_429_in_the_surface_format(
    tmp_path: Path, surface: Surface
) -> None:
    fake = FakeTemporal()
    fake.release.clear()
    async with serve(settings_for(tmp_path, max_inflight_updates=1, update_wait_s=0.2), fake) as h:
        first = asyncio.create_task(surface.send(h))
        try:
            await until(lambda: fake.inside == 1)
            turned_away = await surface.send(h)
        finally:
            fake.release.set()
        done = await first
    assert retry_after(turned_away) >= 1
    message = surface.error(turned_away.json())
    assert surface.workflow_id in message and "retry later" in message
    assert done.status_code == surface.ok, done.text
    # The turned-away request never reached Temporal.
    assert [c.workflow_id for c in fake.calls] == [surface.workflow_id]


@pytest.mark.parametrize("surface", SURFACES, ids=lambda s: s.name)
async def test_a_lasting_refusal_is_retried_then_429(tmp_path: Path, surface: Surface) -> None:
    fake = FakeTemporal(failures=[EXHAUSTED] * 10)
    async with serve(settings_for(tmp_path), fake) as h:
        limits.attach(fake, limits.UpdateLimiter(retry_delays_s=(0.001, 0.001)))  # type: ignore[arg-type]
        resp = await surface.send(h)
    retry_after(resp)
    assert "in-flight updates" in surface.error(resp.json())
    assert len(fake.calls) == 3  # the first attempt and two retries
    assert len({c.update_id for c in fake.calls}) == 1  # all the same update


@pytest.mark.parametrize(
    "surface", [BY_NAME["chemtrail"], BY_NAME["genisys"]], ids=lambda s: s.name
)
async def test_refused_and_aborted_updates_are_sent_again_as_the_same_update(
    tmp_path: Path, surface: Surface
) -> None:
    fake = FakeTemporal(failures=[EXHAUSTED, ABORTED])
    async with serve(settings_for(tmp_path), fake) as h:
        limits.attach(fake, limits.UpdateLimiter(retry_delays_s=(0.001,) * 3))  # type: ignore[arg-type]
        resp = await surface.send(h, request_id="req-42")
    assert resp.status_code == surface.ok, resp.text
    assert len(fake.calls) == 3
    ids = {c.update_id for c in fake.calls}
    assert len(ids) == 1 and None not in ids
    if surface.name == "chemtrail":  # an operation request: its id comes from X-Request-ID
        assert ids == {"submit:req-42"}
    else:  # update-with-start: a fresh start operation each attempt (the SDK's rule)
        assert all(c.with_start for c in fake.calls)


async def test_a_repeated_request_id_is_the_same_update_id(tmp_path: Path) -> None:
    fake = FakeTemporal()
    async with serve(settings_for(tmp_path), fake) as h:
        for _ in range(2):
            resp = await h.post("/v1/scale/in/c1", headers={"X-Request-ID": "again"})
            assert resp.status_code == 201, resp.text
        await h.post("/v1/scale/in/c1")
        await h.post("/v1/scale/in/c1")
    ids = [c.update_id for c in fake.calls]
    assert ids[:2] == ["submit:again", "submit:again"]
    assert len(set(ids[2:])) == 2  # without a request id, each request is its own update


@pytest.mark.parametrize(
    ("error", "status", "calls"),
    [
        (rpc(RPCStatusCode.UNAVAILABLE, "connection refused"), 503, 1),
        (rpc(RPCStatusCode.PERMISSION_DENIED, "not allowed"), 502, 1),
        (WorkflowUpdateRPCTimeoutOrCancelledError(), 503, 1),
    ],
    ids=["down", "refused", "timeout"],
)
async def test_real_failures_stay_502_or_503(
    tmp_path: Path, error: BaseException, status: int, calls: int
) -> None:
    fake = FakeTemporal(failures=[error])
    async with serve(settings_for(tmp_path), fake) as h:
        resp = await h.post("/v1/scale/out/c1")
    assert resp.status_code == status, resp.text
    assert "Retry-After" not in resp.headers
    assert resp.json() == {"Error": resp.json()["Error"], "Code": status}
    assert len(fake.calls) == calls


async def test_an_exhausted_read_is_429_too(tmp_path: Path) -> None:
    fake = FakeTemporal(query_error=EXHAUSTED)
    async with serve(settings_for(tmp_path), fake) as h:
        resp = await h.get("/api/manager/poolsize")
    retry_after(resp)
    assert "in-flight updates" in memcache_error(resp.json())
