"""The dashboard as a person uses it, in headless Chromium driven over the DevTools
protocol: one page stays open while the test reads it, so that what changes on it
without a reload is seen. It covers the pool selector (switching pools changes every
section), the genisys services, the charts' hover values, and a running operation (held
in provisioning by a gated memcached) whose progress moves on the page and whose link
opens its workflow in the Temporal UI."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment

from tests.cli.helpers import gated_memcached
from tests.e2e.slot_helpers import keyset, write_all
from tests.e2e.stack import Stack, stack, stack_settings
from tests.genisys.connector_stub import StubConnector
from tests.genisys.helpers import forget_registry, retire

SERIES = (
    "miss_rate",
    "hit_rate",
    "number_of_items_in_cache",
    "total_size_of_items_in_cache",
    "number_of_requests_served_per_minute",
)
RUNNING = ("started", "in-progress")
REFRESH_S = 10  # the page's own refresh

# The page's state, read in the page: what the tests compare against the API.
SNAPSHOT = """(() => {
  if (!document.body || !document.querySelector("#status")) return null;  // still loading
  const all = (s, root) => [...(root || document).querySelectorAll(s)];
  const attr = (s, a) => { const e = document.querySelector(s); return e && e.getAttribute(a); };
  const progress = d => {
    const p = d.querySelector(".progress");
    if (!p) return null;
    const num = a => p.hasAttribute(a) ? Number(p.getAttribute(a)) : null;
    const bar = p.querySelector("progress");
    return {text: p.textContent, slots_done: num("data-slots-done"),
            slots_total: num("data-slots-total"), keys_moved: num("data-keys-moved"),
            details: (p.querySelector(".details") || {}).textContent || "",
            elapsed: (p.querySelector(".elapsed") || {}).textContent || "",
            bar: bar && {max: bar.getAttribute("max"), value: bar.getAttribute("value")}};
  };
  return {
    loaded: document.body.getAttribute("data-loaded") === "true",
    marker: window.__marker || null,
    search: location.search,
    pool: document.querySelector("#pool").value,
    options: all("#pool option").map(o => o.value),
    poolLink: attr("#pool-ui", "href"),
    nodesPool: attr("#nodes tbody", "data-pool"),
    nodes: all("#nodes tbody tr").map(tr => tr.getAttribute("data-node")),
    chartsPool: attr("#charts", "data-pool"),
    titles: Object.fromEntries(all("#charts svg[data-series]").map(svg => [
      svg.getAttribute("data-series"), all("g.pt title", svg).map(t => t.textContent)])),
    opsPool: attr("#ops", "data-pool"),
    ops: all("#ops .op").map(d => ({
      id: d.getAttribute("data-op"), status: d.getAttribute("data-status"),
      link: (d.querySelector("a.ui-link") || {}).href || null, progress: progress(d)})),
    services: Object.fromEntries(all("#services tbody tr[data-service]").map(tr => [
      tr.getAttribute("data-service"), all("td", tr).map(td => td.textContent)])),
    decisionsPool: attr("#decisions tbody", "data-pool"),
    decisions: all("#decisions tbody tr").map(tr => all("td", tr).map(td => td.textContent)),
    status: document.querySelector("#status").textContent,
    statusClass: document.querySelector("#status").className,
  };
})()"""


class CdpError(Exception):
    """Chromium refused a command (e.g. an evaluation while a page is replaced)."""


class Browser:
    """Headless Chromium over the DevTools protocol on a pipe (``--remote-debugging-pipe``:
    it reads commands on fd 3 and answers on fd 4, each message JSON ended by a NUL), so
    no websocket client is needed. Blocking: call it from a thread, as the test's event
    loop serves the API. Every response the page received is kept (``responses``), and
    every uncaught exception of its script (``errors``)."""

    def __init__(self, chromium: str, tmp: Path) -> None:
        cmd_r, self._cmd_w = os.pipe()
        self._out_r, out_w = os.pipe()
        self.log = tmp / f"chromium-{uuid.uuid4().hex[:6]}.log"
        flags = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--remote-debugging-pipe",
            f"--user-data-dir={tmp / f'profile-{uuid.uuid4().hex[:6]}'}",
            "--window-size=1280,1600",
        ]
        # bash (dash takes one-digit fds only) puts the two pipe ends where Chromium
        # looks for them, fds 3 and 4.
        argv = ["bash", "-c", f'exec "$0" "$@" 3<&{cmd_r} 4>&{out_w}', chromium, *flags]
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                argv, pass_fds=(cmd_r, out_w), stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        os.close(cmd_r)
        os.close(out_w)
        self._buf = b""
        self._last_id = 0
        self.session: str | None = None
        self.responses: list[tuple[str, int]] = []
        self.errors: list[str] = []  # uncaught exceptions in the page
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        attached = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})
        self.session = attached["sessionId"]
        self.call("Network.enable")
        self.call("Runtime.enable")
        metrics = {"width": 1280, "height": 1600, "deviceScaleFactor": 1, "mobile": False}
        self.call("Emulation.setDeviceMetricsOverride", metrics)

    def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        self._last_id += 1
        msg: dict[str, Any] = {"id": self._last_id, "method": method, "params": params or {}}
        if self.session is not None:
            msg["sessionId"] = self.session
        data = json.dumps(msg).encode() + b"\0"
        while data:
            data = data[os.write(self._cmd_w, data) :]
        deadline = time.monotonic() + 60
        while True:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                answer = json.loads(raw)
                if answer.get("method") == "Network.responseReceived":
                    resp = answer["params"]["response"]
                    self.responses.append((resp["url"], int(resp["status"])))
                elif answer.get("method") == "Runtime.exceptionThrown":
                    details = answer["params"]["exceptionDetails"]
                    self.errors.append(str(details.get("exception", details)))
                elif answer.get("id") == self._last_id:
                    if "error" in answer:
                        raise CdpError(f"{method}: {answer['error']}")
                    result: dict[str, Any] = answer.get("result", {})
                    return result
            left = deadline - time.monotonic()
            assert left > 0, f"chromium did not answer {method}; see {self.log}"
            ready, _, _ = select.select([self._out_r], [], [], left)
            if ready:
                chunk = os.read(self._out_r, 1 << 16)
                assert chunk, f"chromium closed its pipe during {method}: {self.tail()}"
                self._buf += chunk

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:]

    def navigate(self, url: str) -> None:
        self.call("Page.navigate", {"url": url})

    def evaluate(self, expression: str) -> Any:
        params = {"expression": expression, "returnByValue": True, "awaitPromise": True}
        answer = self.call("Runtime.evaluate", params)
        assert "exceptionDetails" not in answer, answer["exceptionDetails"]
        return answer["result"].get("value")

    def hover(self, x: float, y: float) -> None:
        self.call("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y})

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.session = None
            self.call("Browser.close")
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._cmd_w)
        os.close(self._out_r)


@pytest.fixture
async def browser(chromium: str, tmp_path: Path) -> AsyncIterator[Browser]:
    b = await asyncio.to_thread(Browser, chromium, tmp_path)
    try:
        yield b
    finally:
        await asyncio.to_thread(b.close)
        failed = [(url, status) for url, status in b.responses if status >= 500]
        assert not failed, f"the page got server errors: {failed}"
        assert not b.errors, f"the page's script failed: {b.errors}"


@contextlib.asynccontextmanager
async def leaving_at_end(browser: Browser) -> AsyncIterator[None]:
    """The page leaves before the API it polls stops: a request that the server's
    shutdown cancels would answer 500."""
    try:
        yield
    finally:
        await asyncio.to_thread(browser.navigate, "about:blank")


async def snapshot(browser: Browser) -> dict[str, Any] | None:
    """The page's state; None while a new page is not there yet."""
    try:
        state: dict[str, Any] | None = await asyncio.to_thread(browser.evaluate, SNAPSHOT)
    except CdpError:
        return None  # the page was being replaced (navigation)
    return state


async def until(browser: Browser, check: Any, what: str, timeout_s: float = 60) -> dict[str, Any]:
    """The page's state once ``check(state)`` holds, read every 0.1 s."""
    deadline = time.monotonic() + timeout_s
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        state = await snapshot(browser) or {}
        if state and check(state):
            return state
        await asyncio.sleep(0.1)
    raise AssertionError(f"the page never showed {what}: {json.dumps(state, indent=1)}")


def url_of(st: Stack, query: str = "") -> str:
    return f"{st.http.base_url}".rstrip("/") + "/dashboard" + query


async def pool_node_ids(st: Stack, name: str) -> list[str]:
    return [n["id"] for n in (await st.pool(name))["nodes"]]


async def op_ids(st: Stack, name: str) -> set[str]:
    resp = await st.http.get("/v1/scale/status", params={"pool": name})
    assert resp.status_code == 200, resp.text
    return set(resp.json())


def check_titles(titles: dict[str, list[str]], stats: dict[str, list[float]]) -> None:
    """Every point's <title> names its series, its time and the API's value."""
    assert set(titles) == set(SERIES), titles
    for key in SERIES:
        values = stats[key]
        assert len(titles[key]) == len(values) == 30, (key, titles[key])
        for i, (title, value) in enumerate(zip(titles[key], values, strict=True)):
            when = "now" if i == 29 else f"-{29 - i} min"
            head, _, shown = title.rpartition(": ")
            assert head.endswith(", " + when), (key, i, title)
            assert float(shown) == value, (key, i, title, value)


async def test_selector_switches_pools_and_lists_services(
    st: Stack, browser: Browser, dev_env: WorkflowEnvironment
) -> None:
    default = st.settings.default_pool_name
    other = st.pool_name()
    assert (await st.put_policy(other, MinCount=2)).status_code == 200
    await st.wait_pool(other, 2)

    # A genisys service on a stub connector (the compute registry is one per server).
    await forget_registry(st.client)
    service, compute = f"web-{uuid.uuid4().hex[:6]}", f"dc-{uuid.uuid4().hex[:6]}"
    connector = StubConnector({service: 2})
    connector.start()
    try:
        resp = await st.http.post("/compute", json={"name": compute, "connector": connector.url})
        assert resp.status_code == 201, resp.text
        resp = await st.http.post(
            f"/service/{service}/scale", json={"number": 2, "compute": compute}
        )
        assert resp.status_code == 200, resp.text

        # One decision of the default pool's autoscaler, within its thresholds.
        resp = await st.http.post("/api/scaler/set_test_miss_rate", json={"test_miss_rate": 0.5})
        assert resp.status_code == 200, resp.text
        await asyncio.to_thread(browser.navigate, url_of(st))
        default_nodes = await pool_node_ids(st, default)
        names = [p["name"] for p in (await st.http.get("/v1/pools")).json()]
        assert default in names and other in names
        state = await until(
            browser,
            lambda s: (
                s["loaded"] and s["nodes"] == default_nodes and set(names) <= set(s["options"])
            ),
            "the default pool with every pool in the selector",
        )
        assert state["pool"] == default and state["statusClass"] == "", state["status"]
        default_ops = await op_ids(st, default)
        assert default_ops and {o["id"] for o in state["ops"]} <= default_ops
        assert state["opsPool"] == state["chartsPool"] == state["nodesPool"] == default
        # The autoscaler's decisions, newest first, as GET /v1/pools/{name}/decisions has them.
        decided = (await st.http.get(f"/v1/pools/{default}/decisions")).json()
        state = await until(
            browser, lambda s: len(s["decisions"]) == len(decided), "the pool's decisions"
        )
        assert state["decisionsPool"] == default
        newest = state["decisions"][0]
        assert newest[1:] == [
            "threshold/miss-rate",
            "miss rate 0.500 (test)",
            "miss rate 0.500 within thresholds",
            str(decided[-1]["count"]),
            "no",
        ], newest
        ns = st.settings.temporal_namespace
        ui = f"http://127.0.0.1:{st.settings.temporal_ui_port}/namespaces/{ns}/workflows/"
        assert state["poolLink"] == ui + f"pool%2F{default}"

        # The charts: the dashboard's stats for the default pool are the manager's, and
        # each point's title holds its value.
        stats = await titles_match(browser, st, default)
        manager = (await st.http.get("/api/manager/aggregate_stats")).json()["content"]
        assert stats == manager

        # The dashboard's own data routes answer bad names as the API does: 404, in JSON.
        for bad in ("no-such-pool", "%20x", "x" * 500, "..%2F..", "%3Cscript%3E"):
            resp = await st.http.get(f"/dashboard/data/pools/{bad}/stats")
            assert resp.status_code == 404 and resp.json()["Code"] == 404, (bad, resp.text)
        page = await st.http.get("/dashboard", params={"pool": "</script><script>x"})
        assert page.status_code == 200 and "</script><script>x" not in page.text

        # Hovering over a chart: the header reads the point's value out, the point shows.
        for series, index in (("number_of_items_in_cache", 29), ("hit_rate", 5)):
            readout = await hover_point(browser, series, index)
            assert readout["index"] == str(index), readout
            assert readout["header"] == readout["title"].split(", ", 1)[1], readout
            assert readout["circleOpacity"] == "1", readout
        assert readout["header"].startswith("-24 min: "), readout

        # The services, as the service route has them.
        def listed(s: dict[str, Any]) -> bool:
            return s["services"].get(service, [None] * 4)[3] == "2"

        state = await until(browser, listed, f"service {service} with 2 running resources", 90)
        view = (await st.http.get(f"/service/{service}")).json()
        rows = (await st.http.get("/dashboard/data/services")).json()
        mine = next(r for r in rows if r["service"] == service)
        assert mine["problem"] is None and mine["view"]["service"] == service
        assert (mine["view"]["compute"], mine["view"]["desired"]) == (compute, 2)
        row = state["services"][service]
        assert row[:4] == [service, compute, str(view["desired"]), "2"], row

        # Switch pools: every section follows, the URL keeps the choice, no reload.
        await asyncio.to_thread(browser.evaluate, "window.__marker = 'same page'")
        await asyncio.to_thread(browser.evaluate, SELECT % json.dumps(other))
        other_nodes = await pool_node_ids(st, other)
        other_ops = await op_ids(st, other)
        state = await until(
            browser,
            lambda s: (
                s["nodes"] == other_nodes
                and s["chartsPool"] == other
                and {o["id"] for o in s["ops"]} == other_ops
            ),
            f"pool {other}",
        )
        assert state["marker"] == "same page"
        assert state["pool"] == other and state["search"] == f"?pool={other}"
        assert state["nodesPool"] == state["opsPool"] == other
        state = await until(browser, lambda s: s["decisionsPool"] == other, "no decisions")
        assert state["decisions"] == [["No decisions yet."]]
        assert not set(default_nodes) & set(state["nodes"])
        assert state["poolLink"] == ui + f"pool%2F{other}"
        await titles_match(browser, st, other)

        # ?pool= opens a pool directly; a pool that does not exist is said so, not a crash.
        await asyncio.to_thread(browser.navigate, url_of(st, f"?pool={other}"))
        state = await until(
            browser,
            lambda s: s["marker"] is None and s["loaded"] and s["nodes"] == other_nodes,
            "?pool=",
        )
        assert state["pool"] == other
        await asyncio.to_thread(browser.navigate, url_of(st, "?pool=no-such-pool"))
        state = await until(
            browser, lambda s: s["search"] == "?pool=no-such-pool" and s["loaded"], "no pool"
        )
        assert state["statusClass"] == "error" and "no pool named" in state["status"]
        assert state["options"][0] == "no-such-pool" and state["nodes"] == []
    finally:
        connector.stop()
        await retire(dev_env.client, st.settings.task_queue)


SELECT = """(() => {
  const select = document.querySelector("#pool");
  select.value = %s;
  select.dispatchEvent(new Event("change"));
  return true;
})()"""

HOVERED = """(() => {
  const g = document.querySelector("g.pt:hover");
  const chart = g && g.closest(".chart");
  return {index: g && g.getAttribute("data-index"),
          title: g && g.querySelector("title").textContent,
          header: chart && chart.querySelector(".latest").textContent,
          circleOpacity: g && getComputedStyle(g.querySelector("circle")).opacity};
})()"""

POINT = """(() => {
  const svg = [...document.querySelectorAll("svg[data-series]")]
    .find(s => s.getAttribute("data-series") === %s);
  const g = svg.querySelectorAll("g.pt")[%d];
  g.scrollIntoView({block: "center"});
  const r = g.querySelector("circle").getBoundingClientRect();
  return [r.left + r.width / 2, r.top + r.height / 2];
})()"""


async def hover_point(browser: Browser, series: str, index: int) -> dict[str, Any]:
    """Moves the mouse onto the point; what the page shows for the hovered point."""
    x, y = await asyncio.to_thread(browser.evaluate, POINT % (json.dumps(series), index))
    await asyncio.to_thread(browser.hover, x, y)
    readout: dict[str, Any] = await asyncio.to_thread(browser.evaluate, HOVERED)
    return readout


async def titles_match(browser: Browser, st: Stack, pool: str) -> dict[str, list[float]]:
    """The charts' titles hold the pool's statistics; read again if a sample landed
    between the page's read and the test's."""
    for _ in range(3):
        before = await pool_stats(st, pool)
        state = await until(browser, lambda s: s["chartsPool"] == pool, f"charts of {pool}")
        after = await pool_stats(st, pool)
        if before == after:
            check_titles(state["titles"], after)
            return after
        await asyncio.sleep(REFRESH_S)
    raise AssertionError(f"the statistics of {pool} kept changing")


async def pool_stats(st: Stack, pool: str) -> dict[str, list[float]]:
    resp = await st.http.get(f"/dashboard/data/pools/{pool}/stats")
    assert resp.status_code == 200, resp.text
    content: dict[str, list[float]] = resp.json()["content"]
    return content


async def test_a_running_operation_shows_live_progress_and_its_temporal_link(
    dev_env: WorkflowEnvironment, tmp_path: Path, browser: Browser
) -> None:
    memcached_bin, armed, gate = gated_memcached(tmp_path)
    name = f"mc-{uuid.uuid4().hex[:8]}"
    settings = stack_settings(
        tmp_path, dev_env.client, memcached_bin=memcached_bin, default_pool_name=name
    )
    async with stack(settings, dev_env.client) as st, leaving_at_end(browser):
        st.pools.append(name)
        assert (await st.put_policy(name, MinCount=1)).status_code == 200
        await st.wait_pool(name, 1)
        await asyncio.to_thread(write_all, str(st.http.base_url), name, keyset(2000))
        armed.touch()  # from now on a new node waits for the gate
        try:
            resp = await st.http.post(f"/v1/scale/out/{name}")
            assert resp.status_code == 201, resp.text
            op_id = resp.json()["ID"]
            await st.wait_activity(op_id, "node_ready")  # held in provisioning

            await asyncio.to_thread(browser.navigate, url_of(st))

            def running(s: dict[str, Any]) -> bool:
                op = next((o for o in s["ops"] if o["id"] == op_id), None)
                return bool(op and op["status"] in RUNNING and op["progress"]["elapsed"])

            state = await until(browser, running, f"operation {op_id} running")
            await asyncio.to_thread(browser.evaluate, "window.__marker = 'same page'")
            op = state["ops"][0]  # running operations come first
            assert op["id"] == op_id
            ns = settings.temporal_namespace
            port = settings.temporal_ui_port
            assert op["link"] == f"http://127.0.0.1:{port}/namespaces/{ns}/workflows/{op_id}"
            api = (await st.http.get(f"/v1/scale/progress/{op_id}")).json()
            assert api["status"] in RUNNING and api["slots_total"] == 0, api
            assert op["progress"]["details"] == api["details"] == "no slot migration yet"
            assert op["progress"]["bar"] == {"max": None, "value": None}  # indeterminate

            # Still held: the page keeps re-reading it, so its clock moves on the page.
            first = op["progress"]["elapsed"]
            polls = progress_reads(browser, op_id)
            state = await until(
                browser,
                lambda s: (s["ops"][0]["progress"] or {}).get("elapsed") not in (None, first),
                "the running time move on",
                timeout_s=15,
            )
            assert state["ops"][0]["status"] in RUNNING
            assert progress_reads(browser, op_id) > polls
        finally:
            gate.touch()

        # Released: the same page (no reload) ends on the operation's final figures.
        def finished(s: dict[str, Any]) -> bool:
            op = next((o for o in s["ops"] if o["id"] == op_id), None)
            p = op and op["progress"]
            return bool(op and op["status"] == "success" and p and p["slots_total"])

        state = await until(browser, finished, f"operation {op_id} finished", 120)
        assert state["marker"] == "same page"
        final = (await st.http.get(f"/v1/scale/progress/{op_id}")).json()
        p = next(o for o in state["ops"] if o["id"] == op_id)["progress"]
        assert final["status"] == "success" and final["slots_done"] == final["slots_total"] > 0
        for key in ("slots_done", "slots_total", "keys_moved"):
            assert p[key] == final[key], (key, p, final)
        assert p["details"] == f"100% \u00b7 {final['details']}"
        assert p["bar"] == {"max": str(final["slots_total"]), "value": str(final["slots_done"])}
        assert final["keys_moved"] > 0 and not p["elapsed"]
        # Nothing runs any more: the page stops re-reading the progress.
        reads = progress_reads(browser, op_id)
        await asyncio.sleep(3)
        await snapshot(browser)
        assert progress_reads(browser, op_id) == reads
        # ... and shows the node it added, still without a reload.
        nodes = [n["id"] for n in (await st.wait_pool(name, 2))["nodes"]]
        state = await until(browser, lambda s: s["nodes"] == nodes, "the new node", 15)
        assert state["marker"] == "same page"


def progress_reads(browser: Browser, op_id: str) -> int:
    return sum(1 for url, _ in browser.responses if url.endswith(f"/v1/scale/progress/{op_id}"))
