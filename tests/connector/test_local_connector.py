"""The connector over real processes (memcached and others), called over real HTTP."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymemcache.client.base import Client

from scaleflow.activities import processes
from scaleflow.connector.app import build_connector_app, create_connector_app
from scaleflow.connector.backends import LocalBackend, LocalRecord
from scaleflow.connector.models import ServiceDefinition, ServicesFile, default_service
from tests.connector import serve

HOST = "127.0.0.1"


def answers(address: str) -> str:
    """The version a memcached at ``address`` reports."""
    host, _, port = address.rpartition(":")
    client = Client((host, int(port)), connect_timeout=2, timeout=2)
    try:
        return client.version().decode()
    finally:
        client.close()


def accepts(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class Connector:
    url: str
    http: httpx.Client
    backend: LocalBackend
    seen: set[int]
    stack: ExitStack = field(default_factory=ExitStack)

    def status(self, service: str) -> httpx.Response:
        return self.http.get(f"/service/{service}/status")

    def scale(self, service: str, number: Any) -> httpx.Response:
        return self.http.post(f"/service/{service}/scale", json={"number": number})

    def resources(self, service: str) -> list[dict[str, Any]]:
        """The service's resources, oldest first, as ``GET /services`` lists them."""
        resp = self.http.get("/services")
        assert resp.status_code == 200, resp.text
        for entry in resp.json():
            if entry["service"] == service:
                assert entry["running_resources"] == len(entry["resources"])
                self.seen.update(r["pid"] for r in entry["resources"])
                return entry["resources"]
        return []

    def stop(self) -> None:
        self.stack.close()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def launch(state_dir: Path, memcached_bin: str) -> Iterator[Callable[..., Connector]]:
    """Start connectors on ``state_dir``; afterwards, stop every process they recorded."""
    seen: set[int] = set()
    connectors: list[Connector] = []

    def start(
        services: list[ServiceDefinition] | None = None,
        fallback: Callable[[str], ServiceDefinition] | None = default_service,
    ) -> Connector:
        backend = LocalBackend(state_dir, memcached_bin=memcached_bin)
        app = create_connector_app(backend, services or [], fallback=fallback)
        stack = ExitStack()
        url = stack.enter_context(serve(app))
        http = stack.enter_context(httpx.Client(base_url=url, timeout=30))
        conn = Connector(url=url, http=http, backend=backend, seen=seen, stack=stack)
        connectors.append(conn)
        return conn

    yield start

    for conn in connectors:
        conn.stop()
    cleanup = LocalBackend(state_dir, memcached_bin=memcached_bin)
    for name in cleanup.services():
        service = ServiceDefinition(name=name)
        for resource in cleanup.running(service):
            seen.add(resource.pid or 0)
            cleanup.kill(service, resource)
    leaked = [pid for pid in seen if pid and processes.is_running(pid)]
    for pid in leaked:
        processes.stop(pid)
    assert not leaked, f"processes left running: {leaked}"


# ---- the newer generation -------------------------------------------------------------


def test_scale_up_down_to_zero_starts_and_stops_real_memcached(
    launch: Callable[..., Connector],
) -> None:
    conn = launch()
    assert conn.status("cache").json() == {"service": "cache", "running_resources": 0}

    resp = conn.scale("cache", 2)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"service": "cache", "running_resources": 2}
    two = conn.resources("cache")
    assert len({r["pid"] for r in two}) == 2
    for r in two:
        assert answers(r["address"])  # each is a memcached that answers
    assert conn.status("cache").json()["running_resources"] == 2

    resp = conn.scale("cache", 1)
    assert resp.json() == {"service": "cache", "running_resources": 1}
    one = conn.resources("cache")
    # The newest went; the oldest still answers.
    assert [r["id"] for r in one] == [two[0]["id"]]
    assert answers(one[0]["address"])
    assert not processes.is_running(two[1]["pid"])
    assert not accepts(two[1]["address"])

    resp = conn.scale("cache", 0)
    assert resp.json() == {"service": "cache", "running_resources": 0}
    assert conn.resources("cache") == []
    assert not processes.is_running(two[0]["pid"])
    assert not accepts(two[0]["address"])
    assert conn.status("cache").json()["running_resources"] == 0


def test_scale_is_idempotent(launch: Callable[..., Connector]) -> None:
    conn = launch()
    assert conn.scale("cache", 2).json()["running_resources"] == 2
    before = conn.resources("cache")
    resp = conn.scale("cache", 2)
    assert resp.status_code == 200
    assert resp.json() == {"service": "cache", "running_resources": 2}
    assert conn.resources("cache") == before
    assert conn.scale("cache", 0).json()["running_resources"] == 0
    assert conn.scale("cache", 0).json()["running_resources"] == 0


def test_concurrent_scale_calls_do_not_overshoot(launch: Callable[..., Connector]) -> None:
    conn = launch()
    with ThreadPoolExecutor(4) as pool:
        answers_ = list(pool.map(lambda _: conn.scale("cache", 3), range(4)))
    assert [a.json() for a in answers_] == [{"service": "cache", "running_resources": 3}] * 4
    live = conn.resources("cache")
    assert len(live) == 3
    assert all(processes.is_running(r["pid"]) for r in live)


def test_services_are_independent(launch: Callable[..., Connector]) -> None:
    conn = launch()
    conn.scale("a", 2)
    conn.scale("b", 1)
    listed = {e["service"]: e["running_resources"] for e in conn.http.get("/services").json()}
    assert listed == {"a": 2, "b": 1}
    conn.scale("a", 0)
    assert conn.status("b").json()["running_resources"] == 1
    conn.resources("b")


# ---- the older generation (v1) --------------------------------------------------------


def test_v1_start_and_kill(launch: Callable[..., Connector]) -> None:
    conn = launch()
    resp = conn.http.get("/service/cache/start")
    assert resp.status_code == 200
    assert resp.json() == {"service": "cache", "running_resources": 1}
    assert conn.http.get("/service/cache/start").json()["running_resources"] == 2
    first, second = conn.resources("cache")
    assert answers(second["address"])

    resp = conn.http.get("/service/cache/kill")
    assert resp.json() == {"service": "cache", "running_resources": 1}
    # v1 kill takes the newest.
    assert [r["id"] for r in conn.resources("cache")] == [first["id"]]
    assert not processes.is_running(second["pid"])

    assert conn.http.get("/service/cache/kill").json()["running_resources"] == 0
    assert not processes.is_running(first["pid"])
    resp = conn.http.get("/service/cache/kill")
    assert resp.status_code == 409
    assert resp.json() == {"message": "No running resource for service cache."}


def test_generations_share_the_same_resources(launch: Callable[..., Connector]) -> None:
    conn = launch()
    conn.http.get("/service/cache/start")
    assert conn.status("cache").json()["running_resources"] == 1
    assert conn.scale("cache", 2).json()["running_resources"] == 2
    assert conn.http.get("/service/cache/kill").json()["running_resources"] == 1
    conn.resources("cache")


# ---- errors ---------------------------------------------------------------------------


def test_unknown_service_with_a_services_file_is_404(launch: Callable[..., Connector]) -> None:
    conn = launch([ServiceDefinition(name="cache")], fallback=None)
    expected = {"message": "Undefined service: other."}
    for resp in (
        conn.status("other"),
        conn.scale("other", 1),
        conn.http.post("/service/other/scale", content=b"not json"),
        conn.http.get("/service/other/start"),
        conn.http.get("/service/other/kill"),
    ):
        assert resp.status_code == 404
        assert resp.json() == expected
    assert conn.status("cache").json() == {"service": "cache", "running_resources": 0}


def test_names_that_cannot_be_services_are_404(launch: Callable[..., Connector]) -> None:
    conn = launch()
    for name in (".hidden", "a%20b", "x" * 80):
        resp = conn.http.get(f"/service/{name}/status")
        assert resp.status_code == 404, name
        assert resp.json() == {"message": f"Undefined service: {name.replace('%20', ' ')}."}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", 'Request body is empty: expected {"number": n}.'),
        (b"number=2", "Request body is not valid JSON."),
        (b"\xff\xfe", "Request body is not valid JSON."),
        (b"[2]", 'Request body must be a JSON object like {"number": 2}.'),
        (b"2", 'Request body must be a JSON object like {"number": 2}.'),
        (b"{}", "Missing parameter: number."),
        (b'{"count": 2}', "Missing parameter: number."),
        (b'{"number": "2"}', 'Parameter number must be an integer, got "2".'),
        (b'{"number": 1.5}', "Parameter number must be an integer, got 1.5."),
        (b'{"number": true}', "Parameter number must be an integer, got true."),
        (b'{"number": null}', "Parameter number must be an integer, got null."),
        (b'{"number": -1}', "Parameter number must be >= 0, got -1."),
        (
            b'{"number": 101}',
            "Parameter number must be <= 100 (max_resources of service cache), got 101.",
        ),
    ],
)
def test_bad_scale_bodies_are_400(
    launch: Callable[..., Connector], body: bytes, message: str
) -> None:
    conn = launch()
    resp = conn.http.post(
        "/service/cache/scale", content=body, headers={"content-type": "application/json"}
    )
    assert resp.status_code == 400
    assert resp.json() == {"message": message}
    assert conn.status("cache").json()["running_resources"] == 0


def test_missing_routes_answer_without_a_message(launch: Callable[..., Connector]) -> None:
    # The control plane reads a 404/405 without a `message` as "no such route" (and falls
    # back to v1); with one, as a refusal. So only an undefined service carries one.
    conn = launch([ServiceDefinition(name="cache")], fallback=None)
    resp = conn.http.get("/nope")
    assert resp.status_code == 404
    assert resp.json() == {"detail": "Not Found"}
    resp = conn.http.post("/service/cache/status")
    assert resp.status_code == 405
    assert resp.json() == {"detail": "Method Not Allowed"}
    resp = conn.http.get("/service/cache/scale")
    assert resp.status_code == 405
    assert "message" not in resp.json()
    resp = conn.http.get("/service/other/status")
    assert resp.status_code == 404
    assert resp.json() == {"message": "Undefined service: other."}


def test_a_resource_that_fails_to_start_is_502(launch: Callable[..., Connector]) -> None:
    broken = ServiceDefinition(
        name="broken", command=["sh", "-c", "echo boom >&2; exit 3"], ports=["main"]
    )
    missing = ServiceDefinition(name="missing", command=["/nonexistent/server", "--flag"])
    quits = ServiceDefinition(name="quits", command="true")
    conn = launch([broken, missing, quits], fallback=None)

    resp = conn.scale("broken", 2)
    assert resp.status_code == 502
    message = resp.json()["message"]
    assert "could not start a resource of service broken" in message
    assert "boom" in message
    assert "(running_resources: 0 of 2)" in message

    resp = conn.http.get("/service/missing/start")
    assert resp.status_code == 502
    assert "cannot run '/nonexistent/server'" in resp.json()["message"]

    resp = conn.scale("quits", 1)
    assert resp.status_code == 502
    assert "exited at start" in resp.json()["message"]

    for name in ("broken", "missing", "quits"):
        assert conn.status(name).json()["running_resources"] == 0
        assert not list((conn.backend.dir / name).glob("*.json"))


def test_a_partial_scale_keeps_what_started(
    launch: Callable[..., Connector], state_dir: Path
) -> None:
    # Only the first run of this command comes up; later ones exit at once.
    flaky = ServiceDefinition(
        name="flaky",
        command=[sys.executable, "-c", FIRST_ONLY, str(state_dir / "flag"), "{port}"],
        ports=["main"],
    )
    conn = launch([flaky], fallback=None)
    resp = conn.scale("flaky", 2)
    assert resp.status_code == 502
    assert "(running_resources: 1 of 2)" in resp.json()["message"]
    assert conn.status("flaky").json()["running_resources"] == 1
    conn.resources("flaky")


# Listens on argv[2] the first time it runs; later runs exit.
FIRST_ONLY = """
import os, socket, sys, time
try:
    os.close(os.open(sys.argv[1], os.O_CREAT | os.O_EXCL))
except FileExistsError:
    sys.exit("already ran once")
s = socket.socket(); s.bind(("127.0.0.1", int(sys.argv[2]))); s.listen()
time.sleep(600)
"""


# ---- liveness and restarts --------------------------------------------------------------


def test_a_resource_killed_behind_its_back_is_not_counted(
    launch: Callable[..., Connector],
) -> None:
    conn = launch()
    conn.scale("cache", 2)
    first, second = conn.resources("cache")
    os.kill(second["pid"], signal.SIGKILL)
    # SIGKILL is delivered asynchronously: wait until the kernel has it dead.
    assert eventually(lambda: not processes.is_running(second["pid"]))

    assert conn.status("cache").json() == {"service": "cache", "running_resources": 1}
    assert [r["id"] for r in conn.resources("cache")] == [first["id"]]

    # Reconciling starts a replacement.
    assert conn.scale("cache", 2).json()["running_resources"] == 2
    for r in conn.resources("cache"):
        assert answers(r["address"])


def test_a_restarted_connector_finds_its_processes(launch: Callable[..., Connector]) -> None:
    first = launch()
    first.scale("cache", 2)
    before = first.resources("cache")
    first.stop()

    second = launch()
    assert second.status("cache").json() == {"service": "cache", "running_resources": 2}
    assert second.resources("cache") == before
    for r in before:
        assert answers(r["address"])

    assert second.scale("cache", 0).json()["running_resources"] == 0
    for r in before:
        assert not processes.is_running(r["pid"])


def test_a_reused_pid_is_not_counted_nor_killed(
    launch: Callable[..., Connector], state_dir: Path
) -> None:
    # A record whose pid now belongs to another process (this one, started at another time).
    rec = LocalRecord(
        id="stale",
        service="cache",
        argv=["memcached"],
        host=HOST,
        pid=os.getpid(),
        start_ticks=1,
        created_at=datetime.now(UTC),
    )
    path = state_dir / "connector" / "cache" / "stale.json"
    path.parent.mkdir(parents=True)
    path.write_text(rec.model_dump_json())

    conn = launch()
    assert conn.status("cache").json()["running_resources"] == 0
    assert not path.exists()
    assert conn.http.get("/service/cache/kill").status_code == 409


# ---- service definitions ------------------------------------------------------------------


def test_custom_command_ports_and_environment(
    launch: Callable[..., Connector], memcached_bin: str
) -> None:
    custom = ServiceDefinition(
        name="custom",
        command=[memcached_bin, "-l", "{host}", "-p", "{port_cache}", "-U", "0"],
        ports=["cache", "spare"],
        environment={"GREETING": "hello", "MY_PORT": "{port_cache}", "MY_ID": "{id}"},
    )
    conn = launch([custom], fallback=None)
    assert conn.scale("custom", 1).json()["running_resources"] == 1
    (res,) = conn.resources("custom")
    assert answers(res["address"])
    environ = Path(f"/proc/{res['pid']}/environ").read_bytes().split(b"\0")
    port = res["address"].rpartition(":")[2]
    assert b"GREETING=hello" in environ
    assert f"MY_PORT={port}".encode() in environ
    assert f"MY_ID={res['id']}".encode() in environ


def test_a_string_command_gets_a_port_for_its_placeholder(
    launch: Callable[..., Connector], memcached_bin: str
) -> None:
    svc = ServiceDefinition(name="str", command=f"{memcached_bin} -l {{host}} -p {{port}} -U 0")
    conn = launch([svc], fallback=None)
    conn.scale("str", 1)
    (res,) = conn.resources("str")
    assert answers(res["address"])


def test_a_service_without_ports_and_its_children_are_stopped(
    launch: Callable[..., Connector], state_dir: Path
) -> None:
    pidfile = state_dir / "child.pid"
    # A shell that forks a child and waits: killing the service must stop both.
    svc = ServiceDefinition(
        name="sleeper",
        command=["sh", "-c", f"sleep 600 & echo $! > {pidfile}; wait"],
    )
    conn = launch([svc], fallback=None)
    assert conn.scale("sleeper", 1).json()["running_resources"] == 1
    (res,) = conn.resources("sleeper")
    assert res["address"] is None
    assert eventually(lambda: pidfile.exists() and pidfile.read_text().strip() != "")
    child = int(pidfile.read_text())
    assert processes.is_running(child)

    assert conn.scale("sleeper", 0).json()["running_resources"] == 0
    assert not processes.is_running(res["pid"])
    # The grandchild got SIGKILL; it is gone once the kernel has delivered it.
    assert eventually(lambda: not processes.is_running(child))


def eventually(check: Callable[[], bool], within_s: float = 10.0) -> bool:
    deadline = time.monotonic() + within_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_services_file_toml_and_json(tmp_path: Path) -> None:
    toml = tmp_path / "services.toml"
    toml.write_text(
        """
[[service]]
name = "cache"

[[service]]
name = "web"
command = ["python3", "-m", "http.server", "{port_http}"]
environment = { MODE = "test" }
ports = ["http"]
"""
    )
    loaded = ServicesFile.load(toml)
    assert [s.name for s in loaded.service] == ["cache", "web"]
    assert loaded.service[0].argv("/usr/bin/memcached")[0] == "/usr/bin/memcached"
    assert loaded.service[1].environment == {"MODE": "test"}

    as_json = tmp_path / "services.json"
    as_json.write_text(json.dumps({"service": [{"name": "cache", "command": "memcached -vv"}]}))
    assert ServicesFile.load(as_json).service[0].argv() == ["memcached", "-vv"]
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps([{"name": "a"}, {"name": "b"}]))
    assert [s.name for s in ServicesFile.load(bare).service] == ["a", "b"]

    for name, text in [
        ("dupes.json", json.dumps([{"name": "a"}, {"name": "a"}])),
        ("bad-name.json", json.dumps([{"name": "a b"}])),
        ("extra.json", json.dumps([{"name": "a", "image": "x"}])),
        ("ports.json", json.dumps([{"name": "a", "ports": ["x-y"]}])),
        ("empty.json", json.dumps([{"name": "a", "command": []}])),
        ("services.yaml", "[]"),
    ]:
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(ValueError):
            ServicesFile.load(path)


def test_build_connector_app_with_a_file_restricts_services(
    tmp_path: Path, memcached_bin: str
) -> None:
    path = tmp_path / "services.toml"
    path.write_text('[[service]]\nname = "cache"\n')
    app = build_connector_app("local", path, tmp_path / "state", memcached_bin=memcached_bin)
    with serve(app) as url:
        assert httpx.get(f"{url}/service/other/status").status_code == 404
        assert httpx.get(f"{url}/service/cache/status").json()["running_resources"] == 0
    with pytest.raises(ValueError, match="image_id"):
        build_connector_app("aws-ec2", path, tmp_path / "state")


# ---- the command ------------------------------------------------------------------------


def test_scaleflow_connector_command(tmp_path: Path, memcached_bin: str) -> None:
    port = processes.free_port()
    state = tmp_path / "state"
    env = {**os.environ, "SCALEFLOW_MEMCACHED_BIN": memcached_bin, "SCALEFLOW_LOG_LEVEL": "WARNING"}
    args = ["connector", "--provider", "local", "--port", str(port), "--state-dir", str(state)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "scaleflow.cli", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    backend = LocalBackend(state, memcached_bin=memcached_bin)
    try:
        url = f"http://{HOST}:{port}"
        assert processes.wait_listening(HOST, port, proc.pid, timeout_s=60), proc.stderr
        resp = httpx.post(f"{url}/service/cache/scale", json={"number": 1}, timeout=30)
        assert resp.json() == {"service": "cache", "running_resources": 1}
        (res,) = backend.running(ServiceDefinition(name="cache"))
        assert answers(res.address or "")
        resp = httpx.post(f"{url}/service/cache/scale", json={"number": 0}, timeout=30)
        assert resp.json() == {"service": "cache", "running_resources": 0}
        assert not processes.is_running(res.pid or 0)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        assert proc.stderr is not None
        proc.stderr.close()
        for resource in backend.running(ServiceDefinition(name="cache")):
            backend.kill(ServiceDefinition(name="cache"), resource)


def test_the_command_rejects_a_bad_services_file(tmp_path: Path) -> None:
    bad = tmp_path / "services.toml"
    bad.write_text("[[service]]\nname = 1\n")
    proc = subprocess.run(
        [sys.executable, "-m", "scaleflow.cli", "connector", "--services", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "scaleflow connector:" in proc.stderr
