"""genisys end to end with the REAL reference connector (not the test stub).

The connector (``scaleflow.connector``, local backend, the default memcached service)
is served over real HTTP on a loopback port; the control plane is the real stack (dev
server, API on a port, in-process worker). Every resource is a real memcached process,
checked through ``/proc`` and by asking it for its version.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymemcache.client.base import Client as MemcacheClient

from scaleflow.activities import processes
from scaleflow.api.events import SURFACE_SOURCE as CONTROL_SOURCE
from scaleflow.connector import LocalBackend, ServiceDefinition, build_connector_app
from tests.connector import serve
from tests.e2e.stack import Stack
from tests.genisys.helpers import define, eventually, unique, upscale


@dataclass
class RealConnector:
    """The reference connector served on a loopback port, and where it keeps its state."""

    url: str
    http: httpx.AsyncClient
    state_dir: Path

    async def status(self, service: str) -> int:
        resp = await self.http.get(f"/service/{service}/status")
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["service"] == service, body
        return body["running_resources"]

    async def scale(self, service: str, number: int) -> int:
        resp = await self.http.post(f"/service/{service}/scale", json={"number": number})
        assert resp.status_code == 200, resp.text
        return resp.json()["running_resources"]

    async def resources(self, service: str) -> list[dict[str, Any]]:
        """The service's resources, oldest first, as ``GET /services`` lists them."""
        resp = await self.http.get("/services")
        assert resp.status_code == 200, resp.text
        for entry in resp.json():
            if entry["service"] == service:
                assert entry["running_resources"] == len(entry["resources"]), entry
                return entry["resources"]
        return []

    def processes(self, service: str) -> set[int]:
        """Live memcached processes started for ``service`` by this connector, found
        through /proc alone: their output goes to a log under the service's state dir
        (still named, as "... (deleted)", once the connector removed the log)."""
        marker = str((self.state_dir / "connector" / service).resolve()) + os.sep
        found = set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            args = processes.cmdline(pid)
            if not args or os.path.basename(args[0]) != "memcached":
                continue
            try:
                out = os.readlink(f"/proc/{pid}/fd/1")
            except OSError:
                continue
            if out.startswith(marker) and processes.is_running(pid):
                found.add(pid)
        return found


@pytest.fixture
async def connector(tmp_path: Path, memcached_bin: str) -> AsyncIterator[RealConnector]:
    """``scaleflow connector --provider local`` without a services file, in this process;
    afterwards, whatever it still runs is stopped and reported as a leak."""
    state_dir = tmp_path / "connector-state"
    app = build_connector_app("local", None, state_dir, memcached_bin=memcached_bin)
    with ExitStack() as stack:
        url = stack.enter_context(serve(app))
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            yield RealConnector(url=url, http=http, state_dir=state_dir)
    backend = LocalBackend(state_dir, memcached_bin=memcached_bin)
    leaked = []
    for name in backend.services():
        service = ServiceDefinition(name=name)
        for resource in backend.running(service):
            leaked.append(resource.pid)
            backend.kill(service, resource)
    assert not leaked, f"the connector left processes running: {leaked}"


def version(address: str) -> str:
    """What the memcached at ``host:port`` answers to ``version``."""
    host, _, port = address.rpartition(":")
    client = MemcacheClient((host, int(port)), connect_timeout=2, timeout=2)
    try:
        return client.version().decode()
    finally:
        client.close()


async def real_resources(conn: RealConnector, service: str, count: int) -> list[dict[str, Any]]:
    """Asserts that ``service`` runs exactly ``count`` real memcached processes, the ones
    the connector lists, each answering on its address; returns the listed resources."""
    assert await conn.status(service) == count
    listed = await conn.resources(service)
    assert len(listed) == count, listed
    pids = {r["pid"] for r in listed}
    assert len(pids) == count and None not in pids, listed
    for r in listed:
        assert processes.is_running(r["pid"]), r
        args = processes.cmdline(r["pid"])
        assert os.path.basename(args[0]) == "memcached", args
        host, _, port = r["address"].rpartition(":")
        assert host == "127.0.0.1" and port in args, (r, args)
        assert await asyncio.to_thread(version, r["address"]), r
    assert conn.processes(service) == pids
    return listed


def connector_events(doc: dict[str, Any], compute: str) -> list[str]:
    """The messages the connector's answers became, all attributed to the compute."""
    own = [e for e in doc["Events"] if e["Source"] != CONTROL_SOURCE]
    assert own and all(e["Source"] == compute for e in own), doc
    return [e["Message"] for e in own]


def plural(n: int) -> str:
    return f"{n} resource" + ("" if n == 1 else "s")


def assert_steps(doc: dict[str, Any], service: str, compute: str, before: int, after: int) -> None:
    """The operation read ``before`` at the connector, then had it scale to ``after``."""
    assert doc["Status"] == "success", doc
    assert doc["Direction"] == ("out" if after > before else "in"), doc
    assert doc["Provider"] == "http-connector", doc
    assert connector_events(doc, compute) == [
        f"service {service} runs {plural(before)} on compute {compute}",
        f"compute {compute} scaled service {service} to {plural(after)}; it runs {after}",
    ], doc


async def test_upscale_twice_downscale_once_runs_one_process(
    st: Stack, connector: RealConnector
) -> None:
    service, compute = unique("cache"), unique("dc")
    await define(st.http, compute, connector.url)
    assert await connector.status(service) == 0
    assert connector.processes(service) == set()

    first = await upscale(st.http, service, compute, "up")
    doc = await st.wait_status(first)
    assert_steps(doc, service, compute, 0, 1)
    cfg = {"compute": compute, "connector": connector.url, "service": service}
    assert doc["ProviderCfg"] == cfg
    (oldest,) = await real_resources(connector, service, 1)

    doc = await st.wait_status(await upscale(st.http, service, compute, "up"))
    assert_steps(doc, service, compute, 1, 2)
    both = await real_resources(connector, service, 2)
    assert both[0]["id"] == oldest["id"]

    doc = await st.wait_status(await upscale(st.http, service, compute, "down"))
    assert_steps(doc, service, compute, 2, 1)
    # The newest was killed; the first one runs on, as the same process.
    (left,) = await real_resources(connector, service, 1)
    assert (left["id"], left["pid"]) == (oldest["id"], oldest["pid"])
    assert not processes.is_running(both[1]["pid"])

    view = (await st.http.get(f"/service/{service}")).json()
    assert view["compute"] == compute and view["running_resources"] == 1, view
    assert view["protocol"] == "v2" and view["desired"] is None, view

    # Nothing keeps a count for this service: scaling the connector to 0 sticks.
    assert await connector.scale(service, 0) == 0
    assert await connector.status(service) == 0
    assert connector.processes(service) == set()
    assert not processes.is_running(oldest["pid"])


async def test_desired_count_reaches_the_reference_connector(
    st: Stack, connector: RealConnector
) -> None:
    service, compute = unique("cache"), unique("dc")
    await define(st.http, compute, connector.url)

    resp = await st.http.post(f"/service/{service}/scale", json={"number": 2, "compute": compute})
    assert resp.status_code == 200, resp.text
    assert resp.json()["desired"] == 2

    # Setting the count makes the service's entity check at once, not after its period;
    # the wait allows for a couple of periods anyway.
    await eventually(
        lambda: _running(connector, service, 2), "the connector never ran 2", timeout_s=40
    )
    listed = await real_resources(connector, service, 2)

    async def corrected() -> dict[str, Any] | None:
        view = (await st.http.get(f"/service/{service}")).json()
        return view if view["running_resources"] == 2 and view["corrections"] else None

    view = await eventually(corrected, "the service never saw 2 running", timeout_s=40)
    assert view["compute"] == compute and view["desired"] == 2, view
    doc = await st.wait_status(view["corrections"][0])
    assert_steps(doc, service, compute, 0, 2)

    # Cleaning up goes through the API too: the entity would restore a count changed
    # behind its back.
    resp = await st.http.post(f"/service/{service}/scale", json={"number": 0})
    assert resp.status_code == 200, resp.text
    await eventually(
        lambda: _running(connector, service, 0), "the connector never ran 0", timeout_s=40
    )
    assert await connector.resources(service) == []
    assert connector.processes(service) == set()
    assert not any(processes.is_running(r["pid"]) for r in listed)


async def _running(conn: RealConnector, service: str, count: int) -> bool:
    return await conn.status(service) == count
