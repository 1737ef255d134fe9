"""docker-compose.yml and the Dockerfile agree with the code they run.

No Docker engine is needed: the files are parsed and checked against the CLI parser,
the Settings model, the registered search attributes and pyproject's console script.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr
from temporalio.common import SearchAttributeIndexedValueType

from scaleflow import cli
from scaleflow.core.settings import Settings
from scaleflow.workflows import attributes

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PYPROJECT = ROOT / "pyproject.toml"

PREFIX = "SCALEFLOW_"
REQUIRED_SERVICES = {
    "postgresql",
    "temporal",
    "temporal-setup",
    "temporal-ui",
    "memcached",
    "worker",
    "api",
}
SCALEFLOW_SERVICES = ("worker", "api")
SEARCH_ATTRIBUTE_CREATE = re.compile(
    r"temporal\s+operator\s+search-attribute\s+create\b(?P<args>[^\n]*)"
)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def pyproject() -> dict[str, Any]:
    return tomllib.loads(PYPROJECT.read_text())


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


def test_scaleflow_services_build_the_repo_image(services: dict[str, dict[str, Any]]) -> None:
    images = set()
    for name in SCALEFLOW_SERVICES:
        build = services[name].get("build")
        assert build, f"{name} is not built from the repo"
        context = build if isinstance(build, str) else build.get("context", ".")
        dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "")
        assert (COMPOSE.parent / context / (dockerfile or "Dockerfile")) == DOCKERFILE
        images.add(services[name]["image"])
    assert len(images) == 1, f"worker and api should run one image, not {images}"


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


@pytest.mark.parametrize("name", SCALEFLOW_SERVICES)
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


def test_worker_keeps_its_state_in_a_volume(services: dict[str, dict[str, Any]]) -> None:
    state_dir = environment(services["worker"]).get(f"{PREFIX}STATE_DIR")
    assert state_dir and state_dir.startswith("/"), "the worker needs an absolute state dir"
    targets = [str(v).split(":")[1] for v in services["worker"].get("volumes", [])]
    assert state_dir in targets, f"{state_dir} is not a volume of the worker ({targets})"


def test_memcached_host_stays_loopback(services: dict[str, dict[str, Any]]) -> None:
    # Local-provider nodes run inside the worker container: clients reach them there.
    host = environment(services["worker"]).get(
        f"{PREFIX}MEMCACHED_HOST", Settings.model_fields["memcached_host"].default
    )
    assert host not in ("0.0.0.0", "memcached"), host


# --- search attributes -------------------------------------------------------------------


def test_setup_registers_exactly_the_workflow_search_attributes(
    services: dict[str, dict[str, Any]],
) -> None:
    script = "\n".join(as_argv(services["temporal-setup"]["command"]))
    registered: list[str] = []
    namespaces = set()
    for match in SEARCH_ATTRIBUTE_CREATE.finditer(script):
        args = shlex.split(match["args"])
        assert args.count("--name") == 1 and args.count("--type") == 1, match[0]
        registered.append(args[args.index("--name") + 1])
        assert args[args.index("--type") + 1] == "Keyword", match[0]
        namespaces.add(args[args.index("--namespace") + 1])
    assert len(registered) == len(set(registered)), f"duplicates in {registered}"
    assert set(registered) == {key.name for key in attributes.ALL}
    # ...in the namespace the worker and the API use.
    for name in SCALEFLOW_SERVICES:
        namespace = environment(services[name]).get(
            f"{PREFIX}TEMPORAL_NAMESPACE", Settings.model_fields["temporal_namespace"].default
        )
        assert namespaces == {namespace}, f"{name} uses {namespace}, attributes in {namespaces}"


def test_search_attributes_are_keywords() -> None:
    # The setup registers every attribute as Keyword, so the code must declare them so.
    for key in attributes.ALL:
        assert key.indexed_value_type == SearchAttributeIndexedValueType.KEYWORD, key.name


# --- start-up order ----------------------------------------------------------------------


@pytest.mark.parametrize("name", SCALEFLOW_SERVICES)
def test_scaleflow_services_wait_for_temporal(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    chain = upstream(services, name)
    assert {"temporal", "temporal-setup", "postgresql"} <= chain, f"{name} waits only for {chain}"
    # Workflows set the search attributes: they must be registered first.
    assert depends_on(services[name]).get("temporal-setup") == "service_completed_successfully"


def test_temporal_waits_for_a_healthy_database(services: dict[str, dict[str, Any]]) -> None:
    assert depends_on(services["temporal"]).get("postgresql") == "service_healthy"
    test = services["postgresql"]["healthcheck"]["test"]
    assert "pg_isready" in " ".join(as_argv(test) if isinstance(test, str) else test)
    assert services["postgresql"].get("volumes"), "the database needs a volume"
    assert "temporal" in upstream(services, "temporal-setup")


def test_temporal_uses_postgresql(services: dict[str, dict[str, Any]]) -> None:
    env = environment(services["temporal"])
    assert env["DB"] == "postgres12"
    assert env["POSTGRES_SEEDS"] == "postgresql"
    db_env = environment(services["postgresql"])
    assert env["POSTGRES_USER"] == db_env["POSTGRES_USER"]
    assert env["POSTGRES_PWD"] == db_env["POSTGRES_PASSWORD"]


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
