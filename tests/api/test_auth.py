"""API tokens against a real stack: changes need the bearer token, in every surface's
error format; reads stay open unless told otherwise; the CLI sends the token; the API
will not serve beyond loopback without one; and the token is never logged."""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from scaleflow.api import auth
from scaleflow.client import HttpSlotMapSource
from scaleflow.core.settings import Settings
from scaleflow.logs import JsonFormatter
from tests.e2e.stack import ROOT, Stack, stack, stack_settings
from tests.genisys.helpers import retire

TOKEN = f"sf-{uuid.uuid4().hex}"
# Same length, one character different: a prefix or length check would let it through.
SAME_LENGTH = TOKEN[:-1] + ("0" if TOKEN[-1] != "0" else "1")
# Authorization headers that must not pass; the last one holds the right secret, but
# under another scheme.
REFUSED = {
    "wrong": "Bearer not-the-token",
    "same length": f"Bearer {SAME_LENGTH}",
    "no credentials": "Bearer",
    "another scheme": f"Basic {TOKEN}",
}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


GOOD = bearer(TOKEN)


def chemtrail_format(body: dict[str, Any]) -> None:
    assert set(body) == {"Error", "Code"} and body["Code"] == 401, body


def memcache_format(body: dict[str, Any]) -> None:
    assert body["success"] == "false" and body["error"]["code"] == 401, body
    assert set(body["error"]) == {"code", "message"}, body


def genisys_format(body: dict[str, Any]) -> None:
    assert set(body) == {"message"} and body["message"], body


def broker_format(body: dict[str, Any]) -> None:
    assert body["error"] == "UNAUTHORIZED" and set(body) == {"error", "message"}, body


def assert_refused(
    resp: httpx.Response, check: Callable[[dict[str, Any]], None], what: str = "no token"
) -> None:
    assert resp.status_code == 401, (what, resp.request.method, resp.request.url, resp.text)
    assert resp.headers["WWW-Authenticate"].startswith("Bearer"), resp.headers
    check(resp.json())
    assert TOKEN not in resp.text


def names() -> dict[str, str]:
    hexes = uuid.uuid4().hex
    return {"pool": f"auth-{hexes[:8]}", "broker": f"auth-{hexes[8:16]}"}


def token_settings(tmp_path: Path, env: WorkflowEnvironment, **over: Any) -> Settings:
    n = names()
    return stack_settings(
        tmp_path,
        env.client,
        api_token=TOKEN,
        default_pool_name=n["pool"],
        broker_name=n["broker"],
        default_pool=False,
        **over,
    )


def api_url(st: Stack) -> str:
    return str(st.http.base_url).rstrip("/")


async def cli(st: Stack, *args: str, token: str | None) -> tuple[int, str, str]:
    """``scaleflow`` as an operator runs it, pointed at the test's API (which serves in
    this event loop: the process is awaited, not waited for)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCALEFLOW_")}
    url = httpx.URL(api_url(st))
    env.update(
        SCALEFLOW_API_URL=api_url(st),
        SCALEFLOW_API_HOST=str(url.host),
        SCALEFLOW_API_PORT=str(url.port),
        PYTHONPATH=str(ROOT),
    )
    if token is not None:
        env["SCALEFLOW_API_TOKEN"] = token
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "scaleflow.cli",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_changes_need_the_token_in_each_surface_format(
    dev_env: WorkflowEnvironment, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = token_settings(tmp_path, dev_env)
    pool = settings.default_pool_name
    compute = f"auth-{uuid.uuid4().hex[:8]}"
    await retire(dev_env.client, settings.task_queue)  # the registry id is server-wide
    async with stack(settings, dev_env.client) as st:
        st.pools.append(pool)
        http = st.http
        policy = {"MinCount": 1, "MaxCount": 4, "Provider": "local"}
        # One mutating route of each surface, and how that surface words an error.
        routes: list[tuple[str, str, dict[str, Any] | None, Callable[[dict[str, Any]], None]]] = [
            ("PUT", f"/v1/policy/{pool}", policy, chemtrail_format),
            ("POST", f"/v1/scale/out/{pool}", None, chemtrail_format),
            ("DELETE", "/api/manager/cache/clear", None, memcache_format),
            (
                "POST",
                "/compute",
                {"name": compute, "connector": "http://127.0.0.1:7051"},
                genisys_format,
            ),
            ("PUT", "/api/v2/epoch/7", None, broker_format),
        ]
        for method, path, body, check in routes:
            assert_refused(await http.request(method, path, json=body), check)
            for label, header in REFUSED.items():
                auth_header = {"Authorization": header}
                resp = await http.request(method, path, json=body, headers=auth_header)
                assert_refused(resp, check, label)

        # Nothing of the above reached an entity: the pool was never created.
        assert (await http.get(f"/v1/pools/{pool}")).status_code == 404

        # The right token: each route's normal answer.
        resp = await http.put(f"/v1/policy/{pool}", json=policy, headers=GOOD)
        assert resp.status_code == 200, resp.text
        resp = await http.post(f"/v1/scale/out/{pool}", headers=GOOD)
        assert resp.status_code == 201, resp.text
        op_id = resp.json()["ID"]
        resp = await http.delete("/api/manager/cache/clear", headers=GOOD)
        assert resp.status_code == 200 and resp.json()["success"] == "true", resp.text
        resp = await http.post(
            "/compute", json={"name": compute, "connector": "http://127.0.0.1:7051"}, headers=GOOD
        )
        assert resp.status_code == 201 and resp.json()["name"] == compute, resp.text
        resp = await http.put("/api/v2/epoch/7", headers=GOOD)
        assert resp.status_code == 200 and resp.headers["X-Broker-Epoch"] == "7", resp.text

        # Reads stay open without a token, HTML and the schema included.
        for path in (
            f"/v1/pools/{pool}",
            "/v1/scale/status",
            "/compute",
            "/api/v2/epoch",
            "/api/scaler/",
            "/dashboard",
            "/docs",
            "/openapi.json",
        ):
            resp = await http.get(path)
            assert resp.status_code == 200, (path, resp.text)

        # The CLI sends SCALEFLOW_API_TOKEN; without it the same verb is refused.
        rc, out, err = await cli(st, "scale", "out", pool, token=None)
        assert rc == 1 and ": 401 " in err and not out, (rc, out, err)
        rc, out, err = await cli(st, "scale", "out", pool, token=TOKEN)
        # It prints the operation's ID.
        assert rc == 0 and len(out.strip()) == 36 and out.count("-") == 4, (rc, out, err)
        assert TOKEN not in out + err

        await st.wait_status(op_id)
        events = (await http.get(f"/v1/scale/status/{op_id}")).text
        history = [
            str(ev) async for ev in dev_env.client.get_workflow_handle(op_id).fetch_history_events()
        ]

    await retire(dev_env.client, settings.task_queue)
    # The access log did see these requests (so the capture works)...
    logged = [JsonFormatter().format(r) for r in caplog.records]
    assert any(f"/v1/scale/out/{pool}" in line for line in logged), logged[-20:]
    # ...and neither it, nor the events, nor the history ever held the token.
    assert not [line for line in logged if TOKEN in line or SAME_LENGTH in line]
    assert TOKEN not in events
    assert not [ev for ev in history if TOKEN in ev]


async def test_reads_need_the_token_when_required(
    dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    settings = token_settings(tmp_path, dev_env, api_read_token_required=True)
    async with stack(settings, dev_env.client, worker=False) as st:
        http = st.http
        reads = [
            ("/v1/pools", chemtrail_format),
            ("/v1/scale/status", chemtrail_format),
            ("/compute", genisys_format),
            ("/api/manager/aggregate_stats", memcache_format),
            ("/api/v2/epoch", broker_format),
            ("/dashboard", chemtrail_format),
            ("/openapi.json", chemtrail_format),
            ("/docs", chemtrail_format),
        ]
        for path, check in reads:
            assert_refused(await http.get(path), check)
            assert_refused(await http.get(path, headers=bearer(SAME_LENGTH)), check)
        # With the token the reads answer as usual.
        for path in ("/v1/pools", "/openapi.json", "/docs", "/dashboard"):
            resp = await http.get(path, headers=GOOD)
            assert resp.status_code == 200, (path, resp.text)
        # And changes are still guarded.
        assert_refused(await http.post("/v1/scale/out/x"), chemtrail_format)


def run_cli(tmp_path: Path, command: str, **env_over: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCALEFLOW_")}
    env.update(
        # Nowhere to connect: an API that did start would wait for Temporal, not exit.
        SCALEFLOW_TEMPORAL_ADDRESS="127.0.0.1:9",
        SCALEFLOW_STATE_DIR=str(tmp_path / "state"),
        PYTHONPATH=str(ROOT),
        **env_over,
    )
    return subprocess.run(
        [sys.executable, "-m", "scaleflow.cli", command],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("command", ["api", "dev"])
@pytest.mark.parametrize("token", [None, "", "  "])
def test_refuses_to_serve_beyond_loopback_without_a_token(
    tmp_path: Path, command: str, token: str | None
) -> None:
    env = {"SCALEFLOW_API_HOST": "0.0.0.0"}
    if token is not None:
        env["SCALEFLOW_API_TOKEN"] = token  # blank is no token
    done = run_cli(tmp_path, command, **env)
    assert done.returncode != 0
    assert "SCALEFLOW_API_TOKEN" in done.stderr and "0.0.0.0" in done.stderr, done.stderr
    # Refused before anything started: `dev` made no dev server log.
    assert not (tmp_path / "state" / "temporal.log").exists()


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.3.2.1", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.1.2.3", False),
        ("api.example.com", False),
        ("", False),
    ],
)
def test_bind_check(host: str, loopback: bool) -> None:
    assert auth.is_loopback(host) is loopback
    open_api = Settings(api_host=host)
    if loopback:
        auth.check_bind(open_api)
    else:
        with pytest.raises(SystemExit, match="SCALEFLOW_API_TOKEN"):
            auth.check_bind(open_api)
    auth.check_bind(Settings(api_host=host, api_token=TOKEN))  # a token allows any host


def test_token_never_prints_and_is_compared_in_constant_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = Settings(api_token=f"  {TOKEN}\n")
    assert settings.api_token is not None
    assert settings.api_token.get_secret_value() == TOKEN  # blanks around are dropped
    for shown in (repr(settings), str(settings), settings.model_dump_json()):
        assert TOKEN not in shown
    assert auth.auth_headers(settings) == GOOD
    assert auth.auth_headers(Settings(api_token="")) == {}

    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert auth.token_matches(TOKEN, TOKEN.encode())
    assert not auth.token_matches(TOKEN, SAME_LENGTH.encode())
    assert len(calls) == 2


def test_slot_map_source_sends_the_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SCALEFLOW_API_TOKEN", raising=False)
    assert "Authorization" not in HttpSlotMapSource("http://127.0.0.1:1", "p").http.headers
    monkeypatch.setenv("SCALEFLOW_API_TOKEN", TOKEN)
    from_env = HttpSlotMapSource("http://127.0.0.1:1", "p")
    assert from_env.http.headers["Authorization"] == GOOD["Authorization"]
    given = HttpSlotMapSource("http://127.0.0.1:1", "p", token=SAME_LENGTH)
    assert given.http.headers["Authorization"] == f"Bearer {SAME_LENGTH}"
