"""docker-compose.yml, its deploy/ scripts and the Dockerfile agree with the code they run.

No Docker engine is needed. The files are parsed and checked against the CLI parser, the
Settings model, the registered search attributes, the dev server's dynamic config, the
API's routes and pyproject's console script. The one-shot jobs' scripts and the health
checks are run for real: the shell scripts against stand-ins for ``temporal`` and
``temporal-sql-tool`` that log their arguments, the Python ones against a stand-in HTTP
server.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import stat
import subprocess
import sys
import threading
import tomllib
import warnings
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from pydantic import SecretStr
from temporalio.common import SearchAttributeIndexedValueType

from scaleflow import cli
from scaleflow.api.app import create_app
from scaleflow.api.schemas.chemtrail import Policy
from scaleflow.core.settings import Settings
from scaleflow.devserver import DEV_SERVER_EXTRA_ARGS
from scaleflow.stack import default_pool
from scaleflow.workflows import attributes

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PYPROJECT = ROOT / "pyproject.toml"

PREFIX = "SCALEFLOW_"
REQUIRED_SERVICES = {
    "postgresql",
    "temporal-admin-tools",
    "temporal",
    "temporal-setup",
    "temporal-ui",
    "memcached",
    "worker",
    "api",
    "default-pool",
}
SCALEFLOW_SERVICES = ("worker", "api")
# Services that run the repo's image.
IMAGE_SERVICES = ("worker", "api", "default-pool")
ADMIN_JOBS = ("temporal-admin-tools", "temporal-setup")
# The API promises 48 h of scaling events; the histories they are read from must outlive it.
MIN_RETENTION_H = 72
TOKEN = "compose-test-token"
# A required variable: compose refuses to start when it is unset.
REQUIRED_VARIABLE = re.compile(r"^\$\{(?P<name>[A-Z][A-Z0-9_]*):\?[^}]+\}$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def pyproject() -> dict[str, Any]:
    return tomllib.loads(PYPROJECT.read_text())


@pytest.fixture(scope="module")
def api_paths() -> dict[str, list[str]]:
    """The API's routes: path template -> methods, as its OpenAPI document lists them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate operation ids of aliased routes
        paths = create_app(Settings()).openapi()["paths"]
    return {path: [m.upper() for m in ops] for path, ops in paths.items()}


def as_argv(value: str | list[str]) -> list[str]:
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def upstream(services: dict[str, dict[str, Any]], name: str) -> set[str]:
    """Every service ``name`` waits for, directly or not; a cycle fails the test."""
    seen: set[str] = set()

    def walk(current: str, path: tuple[str, ...]) -> None:
        for dep in depends_on(services[current]):
            assert dep in services, f"{current} depends on unknown service {dep}"
            assert dep not in path, f"depends_on cycle: {' -> '.join((*path, dep))}"
            seen.add(dep)
            walk(dep, (*path, dep))

    walk(name, (name,))
    return seen


def image_of(service: dict[str, Any]) -> tuple[str, str]:
    repo, _, tag = service["image"].rpartition(":")
    return repo, tag


def mounts(service: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Container path -> (source, options) of the service's volumes (short syntax)."""
    out = {}
    for volume in service.get("volumes", []):
        source, target, *options = str(volume).split(":")
        out[target] = (source, ",".join(options))
    return out


def mounted_file(service: dict[str, Any], container_path: str) -> Path:
    """The repo file bind-mounted, read-only, at ``container_path``."""
    found = mounts(service).get(container_path)
    assert found, f"nothing is mounted at {container_path}"
    source, options = found
    assert source.startswith("./"), f"{container_path} is not a file of the repo ({source})"
    assert "ro" in options.split(","), f"{source} should be mounted read-only"
    path = (COMPOSE.parent / source).resolve()
    assert path.is_file(), f"{source} does not exist"
    return path


def job_script(service: dict[str, Any]) -> Path:
    """The repo script a one-shot job runs with /bin/sh."""
    argv = as_argv(service.get("entrypoint", [])) + as_argv(service.get("command", []))
    assert argv[0] in ("/bin/sh", "sh", "/bin/bash", "bash"), f"not a shell script: {argv}"
    return mounted_file(service, argv[1])


def python_code(argv: list[str]) -> str:
    """The program of ``python -c PROGRAM``."""
    assert argv[:2] == ["python", "-c"], f"not a python -c command: {argv}"
    return argv[2]


def healthcheck_argv(service: dict[str, Any]) -> list[str]:
    check = service.get("healthcheck")
    assert check, "no health check"
    assert not check.get("disable"), "health check disabled"
    test = check["test"]
    if isinstance(test, str):
        return shlex.split(test)
    assert test[0] in ("CMD", "CMD-SHELL"), test
    return [str(a) for a in test[1:]] if test[0] == "CMD" else shlex.split(test[1])


def duration_hours(text: str) -> float:
    match = re.fullmatch(r"(\d+)([dhms])", text)
    assert match, f"not a duration: {text!r}"
    return int(match[1]) * {"d": 24.0, "h": 1.0, "m": 1 / 60, "s": 1 / 3600}[match[2]]


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any SCALEFLOW_* setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(PREFIX)}
    env.update(extra)
    return env


def with_token(env: dict[str, str]) -> dict[str, str]:
    """The service environment as compose would give it with SCALEFLOW_API_TOKEN set."""
    return {k: TOKEN if REQUIRED_VARIABLE.match(v) else v for k, v in env.items()}


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def exec_form(value: str) -> list[str]:
    try:
        argv = json.loads(value)
    except json.JSONDecodeError:
        return shlex.split(value)
    assert isinstance(argv, list), value
    return [str(a) for a in argv]


def help_exit_code(argv: list[str]) -> int | str | None:
    with pytest.raises(SystemExit) as exc:
        cli.main([*argv, "--help"])
    return exc.value.code


# --- stand-ins -----------------------------------------------------------------------------

STUB = """#!{python}
# A stand-in for {name}: logs its arguments, then answers by the first matching rule.
import json, os, sys
argv = sys.argv[1:]
with open(os.environ["STUB_LOG"], "a") as log:
    entry = {{"tool": {name!r}, "argv": argv, "sql_password": os.environ.get("SQL_PASSWORD")}}
    log.write(json.dumps(entry) + "\\n")
for rule in json.loads(os.environ.get("STUB_RULES", "[]")):
    if rule.get("tool", {name!r}) == {name!r} and all(w in argv for w in rule["when"]):
        sys.stdout.write(rule.get("out", ""))
        sys.exit(rule.get("exit", 0))
"""


class Stubs:
    """``temporal`` and ``temporal-sql-tool`` on PATH, logging every call."""

    def __init__(self, root: Path) -> None:
        self.bin = root / "bin"
        self.bin.mkdir()
        self.log = root / "calls.jsonl"
        for name in ("temporal", "temporal-sql-tool"):
            path = self.bin / name
            path.write_text(STUB.format(python=sys.executable, name=name))
            path.chmod(path.stat().st_mode | stat.S_IXUSR)

    def run(
        self, script: Path, env: dict[str, str], rules: list[dict[str, Any]] | None = None
    ) -> subprocess.CompletedProcess[str]:
        self.log.unlink(missing_ok=True)
        full = clean_env(**env)
        full.update(
            PATH=f"{self.bin}{os.pathsep}{os.environ['PATH']}",
            STUB_LOG=str(self.log),
            STUB_RULES=json.dumps(rules or []),
        )
        return subprocess.run(
            ["sh", str(script)], env=full, capture_output=True, text=True, timeout=60
        )

    def calls(self, tool: str | None = None) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        entries = [json.loads(line) for line in self.log.read_text().splitlines()]
        return [e for e in entries if tool is None or e["tool"] == tool]


@pytest.fixture
def stubs(tmp_path: Path) -> Stubs:
    return Stubs(tmp_path)


def flag(argv: list[str], *names: str) -> str | None:
    for i, arg in enumerate(argv[:-1]):
        if arg in names:
            return argv[i + 1]
    return None


Answer = Callable[[str, str, dict[str, str], bytes], tuple[int, str]]


class FakeHTTP:
    """A local HTTP server answering with ``answer(method, path, headers, body)``."""

    def __init__(self, answer: Answer) -> None:
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                fake.requests.append((self.command, self.path, headers, body))
                status, text = answer(self.command, self.path, headers, body)
                data = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHTTP:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        env=clean_env(**env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def route_of(api_paths: dict[str, list[str]], method: str, path: str) -> str | None:
    """The API's path template that ``method path`` reaches, if any."""
    path = path.split("?", 1)[0]
    for template, methods in api_paths.items():
        pattern = "^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)) + "$"
        if method in methods and re.match(pattern, path):
            return template
    return None


@pytest.fixture
def free_port() -> Iterator[int]:
    """A port nothing listens on."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = server.server_address[1]
    server.server_close()
    yield port


# --- services ----------------------------------------------------------------------------


def test_required_services_exist(services: dict[str, dict[str, Any]]) -> None:
    missing = REQUIRED_SERVICES - services.keys()
    assert not missing, f"docker-compose.yml lacks services {sorted(missing)}"


def test_images_are_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        image = service.get("image")
        assert image, f"{name} has no image"
        repo, _, tag = image.rpartition(":")
        assert repo and "/" not in tag, f"{name}: image {image} has no tag"
        assert tag != "latest" and re.search(r"\d", tag), f"{name}: {image} is not pinned"


def test_temporal_is_self_hosted_without_auto_setup(services: dict[str, dict[str, Any]]) -> None:
    # temporalio/auto-setup is deprecated: the server image, set up by admin-tools jobs.
    for name, service in services.items():
        assert "auto-setup" not in service["image"], f"{name} still runs {service['image']}"
    repo, tag = image_of(services["temporal"])
    assert repo == "temporalio/server"
    assert re.fullmatch(r"1\.(2[89]|[3-9]\d)\.\d+", tag), f"temporalio/server:{tag} is too old"


@pytest.mark.parametrize("name", ADMIN_JOBS)
def test_admin_jobs_run_the_server_version(services: dict[str, dict[str, Any]], name: str) -> None:
    _, server_tag = image_of(services["temporal"])
    repo, tag = image_of(services[name])
    assert repo == "temporalio/admin-tools", f"{name} runs {repo}"
    # admin-tools tags read <server version>[-tctl-<v>-cli-<v>].
    assert tag == server_tag or tag.startswith(f"{server_tag}-"), (
        f"{name}: admin-tools {tag} does not match temporalio/server:{server_tag}"
    )
    assert services[name].get("restart") == "no", f"{name} is a one-shot job"


def test_scaleflow_services_build_the_repo_image(services: dict[str, dict[str, Any]]) -> None:
    images = set()
    for name in IMAGE_SERVICES:
        build = services[name].get("build")
        assert build, f"{name} is not built from the repo"
        context = build if isinstance(build, str) else build.get("context", ".")
        dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "")
        assert (COMPOSE.parent / context / (dockerfile or "Dockerfile")) == DOCKERFILE
        images.add(services[name]["image"])
    assert len(images) == 1, f"{IMAGE_SERVICES} should run one image, not {images}"


# --- the scaleflow CLI -------------------------------------------------------------------


def test_help_check_can_fail() -> None:
    # The check below means something only if argparse rejects what it does not know.
    with pytest.raises(SystemExit) as exc:
        cli.main(["no-such-command", "--help"])
    assert exc.value.code not in (0, None)


@pytest.mark.parametrize("name", SCALEFLOW_SERVICES)
def test_commands_are_scaleflow_subcommands(
    services: dict[str, dict[str, Any]], pyproject: dict[str, Any], name: str
) -> None:
    argv = as_argv(services[name]["command"])
    assert argv[0] in pyproject["project"]["scripts"], f"{name} does not run a console script"
    assert argv[0] == "scaleflow"
    assert argv[1:] == [name], f"{name} should run `scaleflow {name}`, not {argv}"
    assert help_exit_code(argv[1:]) == 0, f"`{shlex.join(argv)}` is not a valid command"


# --- settings ----------------------------------------------------------------------------


def test_prefix_is_the_settings_prefix() -> None:
    assert Settings.model_config["env_prefix"] == PREFIX


def test_every_scaleflow_key_is_a_setting(services: dict[str, dict[str, Any]]) -> None:
    used = 0
    for name, service in services.items():
        for key in environment(service):
            if key.upper().startswith(PREFIX):
                used += 1
                field = key[len(PREFIX) :].lower()
                assert field in Settings.model_fields, f"{name}: {key} is not a Settings field"
    assert used, "no SCALEFLOW_* setting is used at all"


@pytest.mark.parametrize("name", IMAGE_SERVICES)
def test_settings_load_from_the_service_environment(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    for key in list(os.environ):
        if key.upper().startswith(PREFIX):
            monkeypatch.delenv(key)
    env = {k: v for k, v in environment(services[name]).items() if k.startswith(PREFIX)}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()  # values must also validate (ports are ints, and so on)
    for key, value in env.items():
        got = getattr(settings, key[len(PREFIX) :].lower())
        # A secret (the API token) prints as stars by design: compare what it holds.
        got = got.get_secret_value() if isinstance(got, SecretStr) else got
        if isinstance(got, bool):
            assert got == (value.lower() in ("1", "true", "yes", "on")), key
        else:
            assert str(got) == value, key


@pytest.mark.parametrize("name", SCALEFLOW_SERVICES)
def test_scaleflow_services_reach_temporal(services: dict[str, dict[str, Any]], name: str) -> None:
    address = environment(services[name]).get(f"{PREFIX}TEMPORAL_ADDRESS")
    assert address, f"{name} would connect to the default {Settings().temporal_address}"
    host, _, port = address.rpartition(":")
    assert host == "temporal", f"{name} points at {address}, not the temporal service"
    published = [str(p) for p in services["temporal"].get("ports", [])]
    assert any(p.rsplit(":", 1)[-1] == port for p in published), (
        f"{name} uses port {port}, temporal listens on {published}"
    )


def test_api_listens_on_all_interfaces(services: dict[str, dict[str, Any]]) -> None:
    env = environment(services["api"])
    assert env.get(f"{PREFIX}API_HOST") == "0.0.0.0"
    # Beyond loopback the API refuses to start without a token (scaleflow.api.auth).
    assert env.get(f"{PREFIX}API_TOKEN"), "the API listens on 0.0.0.0 without a token"
    port = env.get(f"{PREFIX}API_PORT", str(Settings.model_fields["api_port"].default))
    published = [str(p) for p in services["api"].get("ports", [])]
    assert any(p.rsplit(":", 1)[-1] == port for p in published), (
        f"the API listens on {port} but publishes {published}"
    )


def test_tokens_are_not_hard_coded(services: dict[str, dict[str, Any]]) -> None:
    seen = 0
    for name, service in services.items():
        for key, value in environment(service).items():
            if key.upper().endswith("_TOKEN"):
                seen += 1
                match = REQUIRED_VARIABLE.match(value)
                assert match, f"{name}: {key} is written into the file, not ${{{key}:?...}}"
                assert match["name"] == key, f"{name}: {key} is read from {match['name']}"
    assert seen >= 2, "the API and the default-pool job both need SCALEFLOW_API_TOKEN"


def test_worker_keeps_its_state_in_a_volume(services: dict[str, dict[str, Any]]) -> None:
    state_dir = environment(services["worker"]).get(f"{PREFIX}STATE_DIR")
    assert state_dir and state_dir.startswith("/"), "the worker needs an absolute state dir"
    assert state_dir in mounts(services["worker"]), f"{state_dir} is not a volume of the worker"


def test_local_nodes_bind_everywhere_and_advertise_a_name_the_network_resolves(
    services: dict[str, dict[str, Any]],
) -> None:
    # Local-provider nodes run inside the worker container: they must listen on its
    # network address, and the address recorded in slot maps and events must be a name
    # other containers resolve to the worker, not loopback or 0.0.0.0.
    worker = services["worker"]
    env = environment(worker)
    bind = env.get(f"{PREFIX}MEMCACHED_HOST", Settings.model_fields["memcached_host"].default)
    assert bind in ("0.0.0.0", "::"), f"local nodes bind {bind!r}, not every address"
    host = env.get(f"{PREFIX}MEMCACHED_ADVERTISE_HOST") or bind
    names = {"worker"}
    networks = worker.get("networks")
    if isinstance(networks, dict):
        for network in networks.values():
            names.update((network or {}).get("aliases", []))
    assert host in names, f"local nodes would advertise {host!r}, not one of {sorted(names)}"
    # A service name stands for one container only while there is one replica.
    assert (worker.get("deploy") or {}).get("replicas", 1) == 1
    assert "scale" not in worker or worker["scale"] == 1


# --- Temporal: schema, server, namespace ---------------------------------------------------


def test_temporal_waits_for_a_healthy_database(services: dict[str, dict[str, Any]]) -> None:
    assert depends_on(services["temporal"]).get("postgresql") == "service_healthy"
    assert depends_on(services["temporal-admin-tools"]).get("postgresql") == "service_healthy"
    test = services["postgresql"]["healthcheck"]["test"]
    assert "pg_isready" in " ".join(as_argv(test) if isinstance(test, str) else test)
    assert services["postgresql"].get("volumes"), "the database needs a volume"


def test_temporal_uses_postgresql(services: dict[str, dict[str, Any]]) -> None:
    env = environment(services["temporal"])
    assert env["DB"] == "postgres12"
    assert env["POSTGRES_SEEDS"] == "postgresql"
    db_env = environment(services["postgresql"])
    assert env["POSTGRES_USER"] == db_env["POSTGRES_USER"]
    assert env["POSTGRES_PWD"] == db_env["POSTGRES_PASSWORD"]
    # The schema job sets up the very databases the server opens.
    admin = environment(services["temporal-admin-tools"])
    for key in ("DB", "DB_PORT", "POSTGRES_USER", "POSTGRES_PWD", "POSTGRES_SEEDS"):
        assert admin.get(key) == env.get(key), f"temporal-admin-tools and temporal differ in {key}"
    for key, default in (("DBNAME", "temporal"), ("VISIBILITY_DBNAME", "temporal_visibility")):
        assert admin.get(key, default) == env.get(key, default), key


def test_server_starts_after_the_schema_job(services: dict[str, dict[str, Any]]) -> None:
    # Temporal's documented order: the schema first, then the server on top of it.
    assert (
        depends_on(services["temporal"]).get("temporal-admin-tools")
        == "service_completed_successfully"
    )
    assert "temporal" not in upstream(services, "temporal-admin-tools")


def test_schema_job_sets_up_both_stores(services: dict[str, dict[str, Any]], stubs: Stubs) -> None:
    service = services["temporal-admin-tools"]
    env = environment(service)
    # The postgres image creates the database named after its user: that one exists.
    user = env["POSTGRES_USER"]
    exists = {
        "when": ["--db", user, "create"],
        "exit": 1,
        "out": f'ERROR: database "{user}" already exists (SQLSTATE 42P04)',
    }
    done = stubs.run(job_script(service), env, [exists])
    assert done.returncode == 0, done.stderr

    calls = stubs.calls("temporal-sql-tool")
    steps: dict[str, list[list[str]]] = {}
    for call in calls:
        argv = call["argv"]
        assert flag(argv, "--plugin", "--pl") == env["DB"] == "postgres12"
        assert flag(argv, "--ep", "--endpoint") == env["POSTGRES_SEEDS"]
        assert flag(argv, "-p", "--port") == env["DB_PORT"]
        assert flag(argv, "-u", "--user") == env["POSTGRES_USER"]
        # The password travels in the environment, never in argv (ps shows argv).
        assert not {"--pw", "--password"} & set(argv), argv
        assert call["sql_password"] == env["POSTGRES_PWD"]
        at = next(i for i, a in enumerate(argv) if a in ("--db", "--database"))
        # The database, then the command and its own options.
        steps.setdefault(argv[at + 1], []).append(argv[at + 2 :])
    stores = {
        env.get("DBNAME", "temporal"): "temporal",
        env.get("VISIBILITY_DBNAME", "temporal_visibility"): "visibility",
    }
    assert set(steps) == set(stores), f"set up {sorted(steps)}, not {sorted(stores)}"
    for db, store in stores.items():
        assert steps[db] == [
            ["create"],
            ["setup-schema", "-v", "0.0"],
            ["update-schema", "-d", f"/etc/temporal/schema/postgresql/v12/{store}/versioned"],
        ], db


def test_schema_job_fails_when_the_database_does(
    services: dict[str, dict[str, Any]], stubs: Stubs
) -> None:
    service = services["temporal-admin-tools"]
    refused = {"when": ["create"], "exit": 1, "out": "dial tcp: connection refused"}
    done = stubs.run(job_script(service), environment(service), [refused])
    assert done.returncode != 0, "a failed create must fail the job, and so hold the server"
    assert [c["argv"][-1] for c in stubs.calls()] == ["create"], "went on after a failure"


def test_server_config_comes_from_env(services: dict[str, dict[str, Any]]) -> None:
    env = environment(services["temporal"])
    for key in ("DB", "DB_PORT", "POSTGRES_USER", "POSTGRES_PWD", "POSTGRES_SEEDS"):
        assert env.get(key), f"temporal lacks {key}"
    # Beyond loopback, or the port published below and the health check reach nothing.
    assert env.get("BIND_ON_IP") == "0.0.0.0"


def test_dynamic_config_raises_the_dev_servers_poll_rates(
    services: dict[str, dict[str, Any]],
) -> None:
    # What `scaleflow dev` passes: --dynamic-config-value KEY=JSON, pair after pair.
    args = list(DEV_SERVER_EXTRA_ARGS)
    dev: dict[str, Any] = {}
    while args:
        option, pair = args.pop(0), args.pop(0)
        assert option == "--dynamic-config-value", option
        key, _, value = pair.partition("=")
        dev[key] = json.loads(value)
    assert any("MaxPollRPS" in key for key in dev), "the dev server raises no poll rate"

    service = services["temporal"]
    path = environment(service).get("DYNAMIC_CONFIG_FILE_PATH")
    assert path, "the server keeps its default dynamic config"
    # The image resolves a relative path from its TEMPORAL_HOME, /etc/temporal.
    target = str(PurePosixPath("/etc/temporal") / path)
    config = yaml.safe_load(mounted_file(service, target).read_text())
    assert set(config) == set(dev), f"server {sorted(config)} vs dev server {sorted(dev)}"
    for key, value in dev.items():
        entries = config[key]
        assert len(entries) == 1 and not entries[0].get("constraints"), f"{key}: {entries}"
        got = entries[0]["value"]
        assert got == value and type(got) is type(value), f"{key}: {got!r}, dev has {value!r}"


def test_temporal_healthcheck_asks_the_server(services: dict[str, dict[str, Any]]) -> None:
    argv = healthcheck_argv(services["temporal"])
    assert argv[:4] == ["temporal", "operator", "cluster", "health"], argv
    address = flag(argv, "--address")
    assert address, "the check would ask TEMPORAL_ADDRESS, unset in the server container"
    host, _, port = address.rpartition(":")
    assert host in ("127.0.0.1", "localhost")
    published = [str(p).rsplit(":", 1)[-1] for p in services["temporal"].get("ports", [])]
    assert port in published, f"checks port {port}, the frontend is on {published}"


def test_namespace_job_runs_against_a_healthy_server(
    services: dict[str, dict[str, Any]],
) -> None:
    service = services["temporal-setup"]
    assert depends_on(service).get("temporal") == "service_healthy"
    host, _, port = environment(service)["TEMPORAL_ADDRESS"].rpartition(":")
    assert host == "temporal"
    assert port in [str(p).rsplit(":", 1)[-1] for p in services["temporal"].get("ports", [])]


def test_namespace_job_settings(services: dict[str, dict[str, Any]]) -> None:
    env = environment(services["temporal-setup"])
    hours = duration_hours(env["NAMESPACE_RETENTION"])
    assert hours >= MIN_RETENTION_H, f"retention {env['NAMESPACE_RETENTION']} < {MIN_RETENTION_H}h"
    assert hours > Settings.model_fields["event_retention_hours"].default
    registered = env["KEYWORD_SEARCH_ATTRIBUTES"].split()
    assert len(registered) == len(set(registered)), f"duplicates in {registered}"
    assert set(registered) == {key.name for key in attributes.ALL}
    # ...in the namespace the worker and the API use.
    for name in SCALEFLOW_SERVICES:
        namespace = environment(services[name]).get(
            f"{PREFIX}TEMPORAL_NAMESPACE", Settings.model_fields["temporal_namespace"].default
        )
        assert env["NAMESPACE"] == namespace, f"{name} uses {namespace}, setup {env['NAMESPACE']}"


def setup_env(services: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {
        **environment(services["temporal-setup"]),
        "SETUP_ATTEMPTS": "3",
        "SETUP_RETRY_DELAY_S": "0",
    }


def listing(*names: str) -> dict[str, Any]:
    """``temporal operator search-attribute list`` answering with these attributes."""
    rows = "".join(f"  {name:<30} Keyword\n" for name in names)
    return {"when": ["search-attribute", "list"], "out": f"  Name   Type\n{rows}"}


ALL_LISTED = listing(*(key.name for key in attributes.ALL))


def test_namespace_job_creates_the_namespace_and_attributes(
    services: dict[str, dict[str, Any]], stubs: Stubs
) -> None:
    env = setup_env(services)
    done = stubs.run(job_script(services["temporal-setup"]), env, [ALL_LISTED])
    assert done.returncode == 0, done.stderr
    calls = [c["argv"] for c in stubs.calls("temporal")]
    assert calls[0][:3] == ["operator", "cluster", "health"], "no wait for the server"
    created = [a for a in calls if a[:3] == ["operator", "namespace", "create"]]
    assert len(created) == 1, calls
    assert flag(created[0], "--namespace", "-n") == env["NAMESPACE"]
    retention = flag(created[0], "--retention")
    assert retention and duration_hours(retention) >= MIN_RETENTION_H, created[0]
    registered = {}
    for argv in calls:
        if argv[:3] == ["operator", "search-attribute", "create"]:
            assert flag(argv, "--namespace", "-n") == env["NAMESPACE"], argv
            registered[flag(argv, "--name")] = flag(argv, "--type")
    assert registered == {key.name: "Keyword" for key in attributes.ALL}
    assert calls.index(created[0]) < min(
        i for i, a in enumerate(calls) if a[:3] == ["operator", "search-attribute", "create"]
    ), "search attributes registered before the namespace exists"
    # Done only once the server lists them (its namespace cache knows them).
    assert calls[-1][:3] == ["operator", "search-attribute", "list"], calls[-1]
    assert flag(calls[-1], "--namespace", "-n") == env["NAMESPACE"]


@pytest.mark.parametrize("missing", ["all", *(key.name for key in attributes.ALL)])
def test_namespace_job_waits_until_the_attributes_are_listed(
    services: dict[str, dict[str, Any]], stubs: Stubs, missing: str
) -> None:
    names = [key.name for key in attributes.ALL if missing not in ("all", key.name)]
    # A look-alike is not the attribute.
    listed = listing("TemporalChangeVersion", *names, *(f"{missing}Old" for _ in names[:1]))
    env = setup_env(services)
    done = stubs.run(job_script(services["temporal-setup"]), env, [listed])
    assert done.returncode != 0, f"{missing} was never listed, yet the job succeeded"
    lists = [c for c in stubs.calls() if c["argv"][1:3] == ["search-attribute", "list"]]
    assert len(lists) == int(env["SETUP_ATTEMPTS"]), "the listing is not retried"


@pytest.mark.parametrize(("current_s", "raised"), [(86_400, True), (864_000, False)])
def test_namespace_job_runs_again_and_only_raises_retention(
    services: dict[str, dict[str, Any]], stubs: Stubs, current_s: int, raised: bool
) -> None:
    env = setup_env(services)
    namespace = env["NAMESPACE"]
    described = {"config": {"workflowExecutionRetentionTtl": f"{current_s}s"}}
    rules = [
        {
            "when": ["namespace", "create"],
            "exit": 1,
            "out": f'Error: unable to create namespace {namespace}: Namespace "{namespace}" '
            "already exists",
        },
        {"when": ["namespace", "describe"], "out": json.dumps(described, indent=2)},
        {
            # Older CLIs refuse an attribute that exists; newer ones accept it.
            "when": ["search-attribute", "create", attributes.POOL.name],
            "exit": 1,
            "out": f"Error: search attribute {attributes.POOL.name} already exists",
        },
        ALL_LISTED,
    ]
    done = stubs.run(job_script(services["temporal-setup"]), env, rules)
    assert done.returncode == 0, done.stderr
    updates = [
        c["argv"] for c in stubs.calls("temporal") if c["argv"][1:3] == ["namespace", "update"]
    ]
    if raised:
        assert len(updates) == 1, "a retention shorter than the setting was kept"
        assert duration_hours(flag(updates[0], "--retention") or "") >= MIN_RETENTION_H
    else:
        assert not updates, "a longer retention than the setting was shortened"


def test_namespace_job_fails_on_an_attribute_of_another_type(
    services: dict[str, dict[str, Any]], stubs: Stubs
) -> None:
    name = attributes.DIRECTION.name
    rule = {
        "when": ["search-attribute", "create", name],
        "exit": 1,
        "out": f"Error: search attribute {name} already exists and has different type Int",
    }
    done = stubs.run(
        job_script(services["temporal-setup"]), setup_env(services), [rule, ALL_LISTED]
    )
    assert done.returncode != 0, "an attribute of another type must stop the stack"
    tries = [c for c in stubs.calls() if name in c["argv"]]
    assert len(tries) == 1, "a different type is final: no retries"


def test_search_attributes_are_keywords() -> None:
    # The setup registers every attribute as Keyword, so the code must declare them so.
    for key in attributes.ALL:
        assert key.indexed_value_type == SearchAttributeIndexedValueType.KEYWORD, key.name


# --- scaleflow health checks ---------------------------------------------------------------


def test_worker_serves_its_sdk_metrics(services: dict[str, dict[str, Any]]) -> None:
    env = environment(services["worker"])
    assert int(env.get(f"{PREFIX}WORKER_METRICS_PORT", "0")) > 0, "the worker serves no metrics"
    # The health check reads them on loopback, inside the container.
    assert env.get(f"{PREFIX}WORKER_METRICS_HOST") in ("0.0.0.0", "127.0.0.1")


@pytest.mark.parametrize(
    ("metrics", "healthy"),
    [
        pytest.param(
            "# TYPE temporal_worker_task_slots_available gauge\n"
            'temporal_worker_task_slots_available{namespace="default",task_queue="QUEUE",'
            'worker_type="WorkflowWorker"} 100\n',
            True,
            id="polling",
        ),
        pytest.param("", False, id="runtime-up-worker-not-started"),
        pytest.param(
            'temporal_worker_task_slots_available{task_queue="another"} 100\n',
            False,
            id="another-task-queue",
        ),
    ],
)
def test_worker_healthcheck(
    services: dict[str, dict[str, Any]], metrics: str, healthy: bool
) -> None:
    env = environment(services["worker"])
    queue = env.get(f"{PREFIX}TASK_QUEUE", Settings.model_fields["task_queue"].default)
    body = metrics.replace("QUEUE", queue)

    def answer(method: str, path: str, headers: dict[str, str], data: bytes) -> tuple[int, str]:
        return (200, body) if (method, path) == ("GET", "/metrics") else (404, "")

    with FakeHTTP(answer) as fake:
        env[f"{PREFIX}WORKER_METRICS_PORT"] = str(fake.port)
        done = run_python(python_code(healthcheck_argv(services["worker"])), env)
    assert (done.returncode == 0) is healthy, done.stderr
    assert fake.requests, "the check never asked the worker"


def test_worker_healthcheck_fails_when_nothing_listens(
    services: dict[str, dict[str, Any]], free_port: int
) -> None:
    env = environment(services["worker"])
    env[f"{PREFIX}WORKER_METRICS_PORT"] = str(free_port)
    done = run_python(python_code(healthcheck_argv(services["worker"])), env)
    assert done.returncode != 0


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_api_healthcheck(
    services: dict[str, dict[str, Any]],
    api_paths: dict[str, list[str]],
    status: int,
    healthy: bool,
) -> None:
    def answer(method: str, path: str, headers: dict[str, str], data: bytes) -> tuple[int, str]:
        return status, json.dumps({"Status": "ok" if healthy else "unhealthy"})

    env = with_token(environment(services["api"]))
    with FakeHTTP(answer) as fake:
        env[f"{PREFIX}API_PORT"] = str(fake.port)
        done = run_python(python_code(healthcheck_argv(services["api"])), env)
    assert (done.returncode == 0) is healthy, done.stderr
    assert len(fake.requests) == 1
    method, path, headers, _ = fake.requests[0]
    assert route_of(api_paths, method, path) == "/v1/system/health", f"{method} {path}"
    # Reads may need the token too (SCALEFLOW_API_READ_TOKEN_REQUIRED).
    assert headers.get("authorization") == f"Bearer {TOKEN}"


@pytest.mark.parametrize("name", ["temporal", *SCALEFLOW_SERVICES])
def test_long_running_services_have_healthchecks(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    check = services[name].get("healthcheck") or {}
    assert check.get("test") and not check.get("disable"), f"{name} has no health check"
    assert check.get("retries", 3) >= 3 and check.get("interval"), check


# --- the default pool --------------------------------------------------------------------


def test_default_pool_job_waits_for_api_and_worker(services: dict[str, dict[str, Any]]) -> None:
    service = services["default-pool"]
    # Creating a pool is an update: a worker must run the pool's workflow.
    assert depends_on(service) == {"api": "service_healthy", "worker": "service_healthy"}
    assert service.get("restart") == "no", "a one-shot job"
    env, api = environment(service), environment(services["api"])
    assert env[f"{PREFIX}API_HOST"] == "api", "the job must call the api service"
    assert env[f"{PREFIX}API_PORT"] == api[f"{PREFIX}API_PORT"]
    assert env[f"{PREFIX}API_TOKEN"] == api[f"{PREFIX}API_TOKEN"]


class FakeAPI:
    """The API's pool routes, with one pool store; only real routes answer."""

    def __init__(self, api_paths: dict[str, list[str]], put_status: int = 200) -> None:
        self.api_paths = api_paths
        self.put_status = put_status
        self.pools: dict[str, dict[str, Any]] = {}
        self.puts: list[tuple[str, dict[str, Any]]] = []
        self.unknown: list[str] = []

    def __call__(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, str]:
        route = route_of(self.api_paths, method, path)
        name = path.rsplit("/", 1)[-1]
        if route == "/v1/pools/{name}" and method == "GET":
            pool = self.pools.get(name)
            return (200, json.dumps(pool)) if pool else (404, '{"Error": "no pool", "Code": 404}')
        if route == "/v1/policy/{client_class}" and method == "PUT":
            if headers.get("authorization") != f"Bearer {TOKEN}":
                return 401, '{"Error": "unauthorized", "Code": 401}'
            if self.put_status >= 300:
                return self.put_status, '{"Error": "refused", "Code": 422}'
            policy = json.loads(body)
            self.puts.append((name, policy))
            self.pools[name] = {"name": name, "policy": policy}
            return 200, body.decode()
        self.unknown.append(f"{method} {path}")
        return 404, '{"detail": "Not Found"}'


def default_pool_run(
    services: dict[str, dict[str, Any]], port: int, **overrides: str
) -> subprocess.CompletedProcess[str]:
    service = services["default-pool"]
    env = with_token(environment(service))
    env.update({f"{PREFIX}API_HOST": "127.0.0.1", f"{PREFIX}API_PORT": str(port), **overrides})
    return run_python(python_code(as_argv(service["command"])), env)


def test_default_pool_job_creates_the_pool_once(
    services: dict[str, dict[str, Any]], api_paths: dict[str, list[str]]
) -> None:
    api = FakeAPI(api_paths)
    with FakeHTTP(api) as fake:
        first = default_pool_run(services, fake.port)
        assert first.returncode == 0, first.stderr
        second = default_pool_run(services, fake.port)
        assert second.returncode == 0, second.stderr
    assert not api.unknown, f"requests to routes the API does not have: {api.unknown}"
    env = environment(services["default-pool"])
    name = env.get(f"{PREFIX}DEFAULT_POOL_NAME", Settings.model_fields["default_pool_name"].default)
    assert len(api.puts) == 1, f"the pool must be created once, not {len(api.puts)} times"
    put_name, body = api.puts[0]
    assert put_name == name
    # The pool `scaleflow dev` ensures, through the API's own policy document.
    settings = Settings(default_pool_name=name)
    assert Policy.model_validate(body).to_config(name) == default_pool(settings)


def test_default_pool_job_never_changes_an_existing_pool(
    services: dict[str, dict[str, Any]], api_paths: dict[str, list[str]]
) -> None:
    api = FakeAPI(api_paths)
    name = environment(services["default-pool"])[f"{PREFIX}DEFAULT_POOL_NAME"]
    api.pools[name] = {"name": name, "config": {"min_count": 3, "max_count": 30}}
    with FakeHTTP(api) as fake:
        done = default_pool_run(services, fake.port)
    assert done.returncode == 0, done.stderr
    assert not api.puts, "an operator's pool was overwritten"


def test_default_pool_job_stops_on_a_refusal(
    services: dict[str, dict[str, Any]], api_paths: dict[str, list[str]]
) -> None:
    api = FakeAPI(api_paths)
    with FakeHTTP(api) as fake:
        done = default_pool_run(services, fake.port, **{f"{PREFIX}API_TOKEN": "wrong"})
    assert done.returncode != 0, "a 401 must fail the job"
    assert "401" in done.stderr
    assert not api.puts


def test_default_pool_job_needs_the_token(
    services: dict[str, dict[str, Any]], api_paths: dict[str, list[str]]
) -> None:
    api = FakeAPI(api_paths)
    with FakeHTTP(api) as fake:
        done = default_pool_run(services, fake.port, **{f"{PREFIX}API_TOKEN": ""})
    assert done.returncode != 0
    assert not fake.requests


# --- start-up order ----------------------------------------------------------------------


@pytest.mark.parametrize("name", SCALEFLOW_SERVICES)
def test_scaleflow_services_wait_for_temporal(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    chain = upstream(services, name)
    assert {"temporal", "temporal-setup", "temporal-admin-tools", "postgresql"} <= chain, (
        f"{name} waits only for {chain}"
    )
    assert depends_on(services[name]).get("temporal") == "service_healthy"
    # Workflows set the search attributes: they must be registered first.
    assert depends_on(services[name]).get("temporal-setup") == "service_completed_successfully"


# --- Dockerfile --------------------------------------------------------------------------


def test_dockerfile_runs_the_console_script(pyproject: dict[str, Any]) -> None:
    instructions = dockerfile_instructions()
    entrypoints = [exec_form(v) for k, v in instructions if k == "ENTRYPOINT"]
    cmds = [exec_form(v) for k, v in instructions if k == "CMD"]
    assert cmds, "the Dockerfile has no CMD"
    argv = (entrypoints[-1] if entrypoints else []) + cmds[-1]
    scripts = pyproject["project"]["scripts"]
    assert argv[0] in scripts, f"{argv[0]} is not a console script ({sorted(scripts)})"
    module, _, func = scripts[argv[0]].partition(":")
    assert (module, func) == ("scaleflow.cli", "main")
    assert help_exit_code(argv[1:]) == 0, f"`{shlex.join(argv)}` is not a valid command"


def test_dockerfile_installs_the_package_and_memcached(pyproject: dict[str, Any]) -> None:
    instructions = dockerfile_instructions()
    base = next(v for k, v in instructions if k == "FROM")
    version = re.match(r"python:(\d+)\.(\d+)", base)
    assert version, base
    minimum = re.search(r">=\s*(\d+)\.(\d+)", pyproject["project"]["requires-python"])
    assert minimum
    assert tuple(map(int, version.groups())) >= tuple(map(int, minimum.groups()))
    runs = " ".join(v for k, v in instructions if k == "RUN")
    installs = re.findall(r"pip install ([^&;]*)", runs)
    assert installs, "the package is never pip-installed"
    assert not any("[" in target for target in installs), f"extras installed: {installs}"
    apt = re.search(r"apt-get install ([^&;]*)", runs)
    assert apt and Settings.model_fields["memcached_bin"].default in apt[1].split()


def test_dockerfile_env_keys_are_settings() -> None:
    for keyword, rest in dockerfile_instructions():
        if keyword == "ENV":
            for key in re.findall(rf"\b({PREFIX}\w+)=", rest):
                assert key[len(PREFIX) :].lower() in Settings.model_fields, key


def test_dockerignore_keeps_local_state_out() -> None:
    entries = {line.strip().strip("/") for line in DOCKERIGNORE.read_text().splitlines()}
    for needed in (".venv", "var", ".git"):
        assert needed in entries, f".dockerignore should exclude {needed}"
