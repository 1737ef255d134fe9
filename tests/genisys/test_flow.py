"""genisys end to end through HTTP: a real API, a real worker, a dev server, and a stub
connector over real HTTP."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from scaleflow.activities.processes import free_port
from scaleflow.api.events import SURFACE_SOURCE as CONTROL_SOURCE
from tests.e2e.stack import Stack
from tests.genisys.connector_stub import StubConnector
from tests.genisys.helpers import define, eventually, unique, upscale

Stubs = Callable[..., StubConnector]


def connector_events(doc: dict[str, Any], compute: str) -> list[str]:
    """The messages the connector's answers became, all attributed to the compute."""
    own = [e for e in doc["Events"] if e["Source"] != CONTROL_SOURCE]
    assert own and all(e["Source"] == compute for e in own), doc
    return [e["Message"] for e in own]


async def test_upscale_twice_then_downscale_once(st: Stack, connectors: Stubs) -> None:
    service, compute = unique("web"), unique("dc")
    stub = connectors({service: 0})
    await define(st.http, compute, stub.start())

    # Sent back to back: the service's entity runs them in order, one at a time.
    ids = [
        await upscale(st.http, service, compute, "up"),
        await upscale(st.http, service, compute, "up"),
        await upscale(st.http, service, compute, "down"),
    ]
    docs = [await st.wait_status(i) for i in ids]
    assert stub.counts[service] == 1

    expected = [(0, 1), (1, 2), (2, 1)]
    for doc, (before, after), direction in zip(docs, expected, ["out", "out", "in"], strict=True):
        assert doc["Status"] == "success"
        assert doc["Direction"] == direction
        assert doc["Provider"] == "http-connector"
        assert doc["ProviderCfg"] == {"compute": compute, "connector": stub.url, "service": service}
        messages = connector_events(doc, compute)
        assert f"runs {before} resource" in messages[0], messages
        assert f"scaled service {service} to {after} resource" in messages[1], messages
    assert stub.paths().count(f"POST /service/{service}/scale") == 3

    listing = (await st.http.get("/v1/scale/status")).json()
    assert set(ids) <= set(listing)

    view = (await st.http.get(f"/service/{service}")).json()
    assert view["compute"] == compute and view["running_resources"] == 1
    assert view["desired"] is None and view["protocol"] == "v2"


async def test_v1_connector_gets_start(st: Stack, connectors: Stubs) -> None:
    service, compute = unique("old"), unique("dc")
    stub = connectors({service: 0}, v1_only=True)
    await define(st.http, compute, stub.start())

    doc = await st.wait_status(await upscale(st.http, service, compute))
    assert stub.counts[service] == 1
    assert stub.paths() == [
        f"GET /service/{service}/status",
        f"GET /service/{service}/start",
    ]
    messages = connector_events(doc, compute)
    assert "start/kill protocol" in messages[0]
    assert f"started a resource of service {service}; it runs 1" in messages[1]


async def test_operation_waits_for_a_connector_that_is_down(st: Stack, connectors: Stubs) -> None:
    service, compute = unique("web"), unique("dc")
    port = free_port()
    await define(st.http, compute, f"http://127.0.0.1:{port}")
    op = await upscale(st.http, service, compute)

    async def retrying() -> Any:
        desc = await st.client.get_workflow_handle(op).describe()
        pending = desc.raw_description.pending_activities
        return pending and pending[0].attempt >= 2 and "unreachable" in str(pending[0])

    await eventually(retrying, "the status read was never retried")
    doc = (await st.http.get(f"/v1/scale/status/{op}")).json()
    assert doc["Status"] in ("started", "in-progress")

    stub = connectors({service: 0})
    stub.start(port)
    doc = await st.wait_status(op)
    assert stub.counts[service] == 1
    assert connector_events(doc, compute)[-1].startswith(f"compute {compute} scaled service")


async def test_connector_refusal_fails_the_operation(st: Stack, connectors: Stubs) -> None:
    service, compute = unique("old"), unique("dc")
    stub = connectors({service: 0}, v1_only=True)
    await define(st.http, compute, stub.start())

    doc = await st.wait_status(await upscale(st.http, service, compute, "down"), ("failed",))
    refusal = f"No running resource of service {service} to kill"
    assert any(
        refusal in e["Message"] and "409" in e["Message"] and e["Source"] == compute
        for e in doc["Events"]
    ), doc
    assert [(e["Message"], e["Source"]) for e in doc["Events"][-2:]] == [
        (f"downscale of service {service} on compute {compute} failed", compute),
        ("scaling activity has reached terminal failure", CONTROL_SOURCE),
    ]
    assert stub.paths().count(f"GET /service/{service}/kill") == 1  # refused: not retried
    view = (await st.http.get(f"/service/{service}")).json()
    assert refusal in view["last_error"]


async def test_desired_count_is_applied_and_shown(st: Stack, connectors: Stubs) -> None:
    service, compute = unique("web"), unique("dc")
    stub = connectors({service: 0})
    await define(st.http, compute, stub.start())

    resp = await st.http.post(f"/service/{service}/scale", json={"number": 2, "compute": compute})
    assert resp.status_code == 200, resp.text
    assert resp.json()["desired"] == 2

    async def kept() -> dict[str, Any] | None:
        view = (await st.http.get(f"/service/{service}")).json()
        return view if view["running_resources"] == 2 and view["corrections"] else None

    view = await eventually(kept, "the desired count was not applied")
    assert stub.counts[service] == 2
    assert view["compute"] == compute and view["desired"] == 2
    doc = await st.wait_status(view["corrections"][0])
    assert doc["Direction"] == "out"
    assert f"scaled service {service} to 2 resources" in connector_events(doc, compute)[-1]

    # The compute is remembered: later calls may leave it out.
    resp = await st.http.post(f"/service/{service}/scale", json={"number": 0})
    assert resp.status_code == 200, resp.text
    await eventually(lambda: stub.counts[service] == 0, "the count did not follow")
