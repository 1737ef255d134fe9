"""Shared fixtures: real Temporal servers (time-skipping and dev), settings in a temp dir."""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from scaleflow.activities import processes
from scaleflow.activities.providers.local import LocalProvider
from scaleflow.core.settings import Settings
from scaleflow.devserver import DEV_SERVER_EXTRA_ARGS
from scaleflow.workflows import attributes
from tests.chaos.harness import ROWS_FILE_ENV, recorded, table
from tests.servers import memcached, temporal_cli, temporal_test_server

pytest_plugins = ["tests.aws_fixtures"]


async def time_skipping_env() -> WorkflowEnvironment:
    """A time-skipping test server with the project's search attributes."""
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=temporal_test_server(),
        data_converter=pydantic_data_converter,
    )
    # Unknown search attributes would fail workflow tasks forever: register them first.
    await env.client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=env.client.namespace,
            search_attributes={
                k.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD for k in attributes.ALL
            },
        )
    )
    return env


# One per test file: the time-skipping server skips no time while any activity is
# outstanding, so a workflow another file left with one (its worker gone) would make
# every env.sleep() here wait in real time (a 2 s test took 235 s in a whole run).
@pytest.fixture(scope="module")
async def time_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await time_skipping_env()
    yield env
    await env.shutdown()


@pytest.fixture(scope="session")
async def dev_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_cli(),
        data_converter=pydantic_data_converter,
        search_attributes=attributes.ALL,
        dev_server_log_level="error",
        dev_server_extra_args=DEV_SERVER_EXTRA_ARGS,
    )
    yield env
    await env.shutdown()


@pytest.fixture(scope="session")
def memcached_bin() -> str:
    return memcached()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(state_dir=tmp_path / "state", drain_poll_interval_s=0.05)


@pytest.fixture
def provider(settings: Settings, memcached_bin: str) -> Iterator[LocalProvider]:
    """The local provider in the test's state dir; every node it started is gone after."""
    p = LocalProvider(settings)
    try:
        yield p
    finally:
        ports = {r.port for r in p.records()}
        p.stop_all()
        for port in ports:
            assert processes.find_listening("memcached", "127.0.0.1", port) is None


# The longest files, longest first (``--durations`` on a 2-core machine). With
# ``--dist loadfile --no-loadscope-reorder`` pytest-xdist hands files out in collection
# order: a long file started last would run alone while the other workers sit idle.
LONGEST_FIRST = (
    "tests/e2e/test_broker_random.py",
    "tests/workflows/test_broker_redis.py",
    "tests/e2e/test_bursts.py",
    "tests/chaos/test_chaos_migration.py",
    "tests/chaos/test_chaos_rollout.py",
    "tests/chaos/test_chaos_scale_in_nomad.py",
    "tests/e2e/test_broker_crash.py",
    "tests/chaos/test_chaos_scale_in.py",
    "tests/e2e/test_broker_load.py",
    "tests/chaos/test_chaos_scale_out.py",
    "tests/api/test_openapi_contract.py",
    "tests/e2e/test_slots.py",
    "tests/e2e/test_bursts_pools.py",
    "tests/e2e/test_crash.py",
    "tests/e2e/test_concurrent_resizes.py",
    "tests/workflows/test_autoscaler.py",
    "tests/cli/test_verbs.py",
    "tests/api/test_broker_api.py",
    "tests/core/broker/test_random_actions.py",
    "tests/e2e/test_broker_burst.py",
    "tests/e2e/test_migration_crash.py",
    "tests/genisys/test_burst.py",
    "tests/genisys/test_reconcile.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))


def pytest_configure(config: pytest.Config) -> None:
    # The controller (with or without pytest-xdist) names the file the chaos matrix's
    # rows are collected in; workers inherit it through the environment.
    if not hasattr(config, "workerinput") and ROWS_FILE_ENV not in os.environ:
        fd, path = tempfile.mkstemp(prefix="scaleflow-chaos-", suffix=".jsonl")
        os.close(fd)
        os.environ[ROWS_FILE_ENV] = path


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    rows = recorded(os.environ.get(ROWS_FILE_ENV, ""))
    if rows:
        terminalreporter.write_sep("=", "chaos matrix")
        terminalreporter.write_line(table(rows))


def pytest_unconfigure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):
        path = os.environ.pop(ROWS_FILE_ENV, None)
        if path:
            Path(path).unlink(missing_ok=True)
