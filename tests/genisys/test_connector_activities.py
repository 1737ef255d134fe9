"""The connector activities' reading of answers: when to fall back to v1, what is
retried and what fails at once (ActivityEnvironment, answers from httpx.MockTransport)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import httpx
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from scaleflow.activities.connector import SERVER_ERROR_ATTEMPTS, ConnectorActivities
from scaleflow.activities.processes import free_port
from scaleflow.core.genisys import Compute, ConnectorCall, ScaleCall, StepCall

COMPUTE = Compute(name="dc", connector="http://connector.test")
CALL = ConnectorCall(service="web", compute=COMPUTE)
Handler = Callable[[httpx.Request], httpx.Response]


def acts(handler: Handler) -> ConnectorActivities:
    return ConnectorActivities(httpx.MockTransport(handler))


def answer(status: int, **kw: object) -> Handler:
    return lambda request: httpx.Response(status, **kw)  # type: ignore[arg-type]


def env(attempt: int = 1) -> ActivityEnvironment:
    e = ActivityEnvironment()
    e.info = dataclasses.replace(e.info, attempt=attempt)
    return e


@pytest.mark.parametrize(
    "missing",
    [
        answer(404, json={"detail": "Not Found"}),  # FastAPI
        answer(404, text="<html><h1>Not Found</h1></html>"),  # Flask
        answer(405, json={"detail": "Method Not Allowed"}),
        answer(404),
    ],
)
async def test_a_missing_status_route_selects_v1(missing: Handler) -> None:
    result = await env().run(acts(missing).connector_status, CALL)
    assert result.protocol == "v1" and result.running is None
    assert result.events[0].source == "dc"


async def test_status_reads_the_count() -> None:
    ok = answer(200, json={"service": "web", "running_resources": 2})
    result = await env().run(acts(ok).connector_status, CALL)
    assert (result.protocol, result.running) == ("v2", 2)
    assert result.events[0].message == "service web runs 2 resources on compute dc"


async def test_an_unknown_service_is_a_refusal_not_a_missing_route() -> None:
    unknown = answer(404, json={"message": "Unknown service: web"})
    with pytest.raises(ApplicationError) as err:
        await env().run(acts(unknown).connector_status, CALL)
    assert err.value.non_retryable
    assert err.value.message == "connector of compute dc answered 404: Unknown service: web"
    assert err.value.details == ({"source": "dc"},)


async def test_a_missing_scale_route_is_reported_not_failed() -> None:
    result = await env().run(
        acts(answer(405)).connector_scale, ScaleCall(service="web", compute=COMPUTE, number=3)
    )
    assert result.applied is False


async def test_server_errors_are_retried_a_few_times_then_fail() -> None:
    failing = answer(502, json={"message": "docker is down"})
    step = StepCall(service="web", compute=COMPUTE, action="start")
    with pytest.raises(ApplicationError) as err:
        await env(attempt=1).run(acts(failing).connector_step, step)
    assert not err.value.non_retryable and "docker is down" in err.value.message
    with pytest.raises(ApplicationError) as err:
        await env(attempt=SERVER_ERROR_ATTEMPTS).run(acts(failing).connector_step, step)
    assert err.value.non_retryable


@pytest.mark.parametrize(
    "body", [{"service": "web"}, {"running_resources": -1}, "not json", {"running_resources": "2"}]
)
async def test_an_answer_outside_the_protocol_fails(body: object) -> None:
    kw = {"text": body} if isinstance(body, str) else {"json": body}
    with pytest.raises(ApplicationError) as err:
        await env().run(acts(answer(200, **kw)).connector_status, CALL)
    assert err.value.non_retryable and "running_resources" in err.value.message


async def test_an_unreachable_connector_is_retried() -> None:
    down = Compute(name="dc", connector=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ApplicationError) as err:
        await env().run(
            ConnectorActivities().connector_status, ConnectorCall(service="web", compute=down)
        )
    assert not err.value.non_retryable and "unreachable" in err.value.message
    assert err.value.__cause__ is None  # small failures: no httpx chain


async def test_a_v1_call_that_may_have_acted_is_not_repeated() -> None:
    def lost(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    step = StepCall(service="web", compute=COMPUTE, action="start")
    with pytest.raises(ApplicationError) as err:
        await env().run(acts(lost).connector_step, step)
    assert err.value.non_retryable and "may or may not have acted" in err.value.message
    # The same loss on an absolute scale is safe to retry.
    with pytest.raises(ApplicationError) as err:
        await env().run(
            acts(lost).connector_scale, ScaleCall(service="web", compute=COMPUTE, number=1)
        )
    assert not err.value.non_retryable
