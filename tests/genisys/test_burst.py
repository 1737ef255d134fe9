"""A burst of ``POST /service/{name}/scale`` and of upscales on one service: exact
answers, no 5xx, the connector's count within what was asked, the last accepted count
kept, and the entity's history replays."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import Any

from temporalio.api.enums.v1 import EventType

from scaleflow.core.genisys import MAX_RESOURCES, service_workflow_id
from tests.bursts import Sampler, assert_replays, burst, no_server_errors
from tests.e2e.stack import Stack
from tests.genisys.connector_stub import StubConnector
from tests.genisys.helpers import define, eventually, unique

Stubs = Callable[..., StubConnector]


async def _last_accepted_number(st: Stack, service: str) -> int:
    """The ``number`` of the last ``set_desired`` the entity accepted, from its history."""
    handle = st.client.get_workflow_handle(service_workflow_id(service))
    last: int | None = None
    async for ev in handle.fetch_history_events():
        if ev.event_type != EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED:
            continue
        req = ev.workflow_execution_update_accepted_event_attributes.accepted_request
        if req.input.name == "set_desired":
            last = json.loads(req.input.args.payloads[0].data)["number"]
    assert last is not None
    return last


async def test_a_burst_of_scale_requests(st: Stack, connectors: Stubs) -> None:
    service, compute = unique("web"), unique("dc")
    stub = connectors({service: 0})
    await define(st.http, compute, stub.start())
    first = await st.http.post(f"/service/{service}/scale", json={"number": 1, "compute": compute})
    assert first.status_code == 200, first.text

    numbers = [i % 5 for i in range(90)] + [-1, MAX_RESOURCES + 1] * 5

    async def count() -> int:
        return stub.counts.get(service, 0)

    sampler = Sampler(count)
    async with sampler.running():
        resps = await burst(
            len(numbers),
            lambda i: st.http.post(f"/service/{service}/scale", json={"number": numbers[i]}),
        )
        no_server_errors(resps)
        for n, r in zip(numbers, resps, strict=True):
            assert r.status_code == (200 if 0 <= n <= MAX_RESOURCES else 400), (n, r.text)
        kept = await _last_accepted_number(st, service)

        async def settled() -> dict[str, Any] | None:
            view = (await st.http.get(f"/service/{service}")).json()
            done = view["desired"] == kept == view["running_resources"] and not view["queue"]
            return view if done and stub.counts[service] == kept else None

        view = await eventually(settled, "the last accepted count was not kept")
    sampler.within(0, 4)
    for op in view["corrections"]:
        assert (await st.wait_status(op))["Status"] == "success"
    await assert_replays(st.client, service_workflow_id(service))


async def test_a_burst_of_upscales(st: Stack, connectors: Stubs) -> None:
    """Every upscale is accepted and applied once, in order: the count adds up."""
    service, compute = unique("api"), unique("dc")
    stub = connectors({service: 0})
    await define(st.http, compute, stub.start())
    resps = await burst(
        40, lambda i: st.http.post(f"/service/{service}/upscale", json={"compute": compute})
    )
    no_server_errors(resps)
    assert Counter(r.status_code for r in resps) == {201: 40}
    ids = [r.json()["ID"] for r in resps]
    assert len(set(ids)) == 40
    for op in ids:
        assert (await st.wait_status(op, timeout_s=120))["Status"] == "success"
    assert stub.counts[service] == 40
    await assert_replays(st.client, service_workflow_id(service), keep_as="service_burst")
