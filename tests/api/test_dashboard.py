"""The dashboard in a real browser: headless Chromium (Debian's, installed by the set-up
if missing) renders the page against a real stack; its charts hold the points the
API returns, and the screenshot is a real picture."""

from __future__ import annotations

import asyncio
import json
import struct
import time
import uuid
import zlib
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from pymemcache.client.base import Client as Memcache

from scaleflow.api.app import create_app
from scaleflow.api.dashboard_page import render
from scaleflow.core.settings import Settings
from tests.e2e.stack import Stack

SERIES = (
    "miss_rate",
    "hit_rate",
    "number_of_items_in_cache",
    "total_size_of_items_in_cache",
    "number_of_requests_served_per_minute",
)
# The page plots each chart between y = 10 (its maximum) and y = 144 (zero).
BASELINE = 144.0
TOP = 10.0


async def run_chromium(chromium: str, tmp: Path, url: str, *mode: str) -> str:
    profile = tmp / f"profile-{uuid.uuid4().hex[:6]}"
    proc = await asyncio.create_subprocess_exec(
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1280,1600",
        "--virtual-time-budget=5000",
        *mode,
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=180)
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode(errors="replace")


class Polylines(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.lines: dict[str, list[tuple[float, float]]] = {}
        self.attrs_seen: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.attrs_seen.append(found)
        if tag == "polyline" and found.get("data-series"):
            pairs = (p.split(",") for p in (found.get("points") or "").split())
            self.lines[str(found["data-series"])] = [(float(x), float(y)) for x, y in pairs]


# The only URLs in the page: the SVG namespace, and the Temporal UI links it builds.
KNOWN_URLS = ("http://www.w3.org/2000/svg", "`http://${location.hostname}:")


def self_contained(text: str) -> bool:
    for known in KNOWN_URLS:
        text = text.replace(known, "")
    return not any(s in text for s in ("http://", "https://", " src=", "<link", "@import"))


def check_series(key: str, values: list[float], points: list[tuple[float, float]]) -> None:
    """The polyline plots ``values``, oldest to newest, on one linear scale."""
    assert len(points) == len(values) == 30, (key, points)
    xs = [x for x, _ in points]
    assert xs == sorted(xs) and len(set(xs)) == 30, (key, xs)
    top = max(values)
    if top <= 0:
        assert all(y == BASELINE for _, y in points), (key, points)
        return
    y_top = points[values.index(top)][1]
    assert TOP <= y_top < BASELINE, (key, y_top)
    per_unit = (BASELINE - y_top) / top
    for v, (_, y) in zip(values, points, strict=True):
        assert abs(y - (BASELINE - v * per_unit)) < 0.2, (key, v, y, values, points)


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def png_pixels(data: bytes) -> bytes:
    idat, pos = b"", 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        if kind == b"IDAT":
            idat += data[pos + 8 : pos + 8 + length]
        pos += 12 + length
    return zlib.decompress(idat)


def traffic(address: str, round_no: int) -> None:
    host, port = address.rsplit(":", 1)
    mc = Memcache((host, int(port)), connect_timeout=5, timeout=5)
    try:
        for i in range(20):
            mc.set(f"k{round_no}-{i}", b"x" * 2000)
        for i in range(30):
            mc.get(f"k{round_no}-{i}")  # 20 hits, 10 misses
    finally:
        mc.close()


async def stats(st: Stack) -> dict[str, list[float]]:
    resp = await st.http.get("/api/manager/aggregate_stats")
    assert resp.status_code == 200, resp.text
    content: dict[str, list[float]] = resp.json()["content"]
    return content


async def seed_stats(st: Stack) -> dict[str, list[float]]:
    """Real samples with traffic in them: sample every second for a while (thresholds
    that never resize), then back to one a minute, so that the figures hold still."""
    fast = {
        "interval_s": 1,
        "auto_mode": True,
        "min_miss_rate_threshold": 0,
        "max_miss_rate_threshold": 1,
    }
    assert (await st.http.post("/api/scaler/config", json=fast)).status_code == 200
    address = (await st.pool(st.settings.default_pool_name))["nodes"][0]["address"]
    deadline, round_no = time.monotonic() + 90, 0
    while True:
        got = await stats(st)
        if any(got["number_of_requests_served_per_minute"]) and any(got["miss_rate"]):
            break
        assert time.monotonic() < deadline, f"no statistics with traffic: {got}"
        traffic(address, round_no)
        round_no += 1
        await asyncio.sleep(0.5)
    slow = {"interval_s": 60, "auto_mode": False}
    assert (await st.http.post("/api/scaler/config", json=slow)).status_code == 200
    previous: dict[str, Any] = {}
    while got != previous:  # the sample under way (if any) lands, then none for a minute
        previous = got
        await asyncio.sleep(1.5)
        got = await stats(st)
    return got


async def test_dashboard_renders_the_api_figures(st: Stack, chromium: str, tmp_path: Path) -> None:
    url = f"{st.http.base_url}".rstrip("/") + "/dashboard"
    page = await st.http.get("/dashboard")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "<script" in page.text and self_contained(page.text), "the page must be self-contained"
    root = await st.http.get("/")
    assert root.status_code == 200 and root.text == page.text

    values = await seed_stats(st)
    for _ in range(3):  # a sample landing between the two reads: read again
        dom = await run_chromium(chromium, tmp_path, url, "--dump-dom")
        after = await stats(st)
        if after == values:
            break
        values = after
    parser = Polylines()
    parser.feed(dom)
    assert 'data-loaded="true"' in dom, dom[-3000:]
    assert set(parser.lines) == set(SERIES), dom[-3000:]
    for key in SERIES:
        check_series(key, values[key], parser.lines[key])
    assert any(y < BASELINE for _, y in parser.lines["number_of_requests_served_per_minute"])
    assert any(y < BASELINE for _, y in parser.lines["number_of_items_in_cache"])

    view = await st.pool(st.settings.default_pool_name)
    node = view["nodes"][0]
    assert f'data-node="{node["id"]}"' in dom and node["address"] in dom
    ops = (await st.http.get("/v1/scale/status", params={"pool": view["name"]})).json()
    assert ops and all(f'data-op="{op_id}"' in dom for op_id in list(ops)[:10])
    assert "scaling activity has successfully completed" in dom
    assert 'id="status" class="error"' not in dom

    shot = tmp_path / "dashboard.png"
    await run_chromium(chromium, tmp_path, url, f"--screenshot={shot}")
    data = shot.read_bytes()
    assert png_size(data) == (1280, 1600)
    assert len(data) > 20_000, len(data)
    assert len(set(png_pixels(data))) > 32  # not a blank page


def test_the_dashboard_is_not_in_the_openapi_schema(tmp_path: Path) -> None:
    app = create_app(Settings(state_dir=tmp_path / "state"))
    paths = set(app.openapi()["paths"])
    assert paths and "/v1/pools" in paths
    assert not [p for p in paths if p == "/" or p.startswith("/dashboard")], paths


def test_the_page_carries_its_settings_safely(tmp_path: Path) -> None:
    """The pool, namespace and UI port reach the page as JSON that cannot end its script."""
    settings = Settings(
        state_dir=tmp_path / "state",
        default_pool_name="</script><b>x",
        temporal_namespace="team-a",
        temporal_ui_port=18233,
    )
    page = render(settings)
    line = next(x for x in page.splitlines() if x.startswith("const CONFIG = "))
    config = json.loads(line.removeprefix("const CONFIG = ").removesuffix(";"))
    assert config == {
        "default_pool": "</script><b>x",
        "namespace": "team-a",
        "temporal_ui_port": 18233,
    }
    assert page.count("</script>") == 1
