"""The operator verbs as a subprocess against a real stack (dev server, API on a port,
in-process worker, real memcached; a stub genisys connector over HTTP): each surface's
verbs, ``--output json|table``, ``--api-url`` and the exit codes."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment

from tests.cli.helpers import cli_env, run_cli
from tests.e2e.stack import Stack, stack, stack_settings
from tests.genisys.connector_stub import StubConnector
from tests.genisys.helpers import retire, unique


@pytest.fixture
async def st(dev_env: WorkflowEnvironment, tmp_path: Path) -> AsyncIterator[Stack]:
    settings = stack_settings(tmp_path, dev_env.client, computes_file=tmp_path / "none.toml")
    await retire(dev_env.client, settings.task_queue)
    async with stack(settings, dev_env.client) as s:
        try:
            yield s
        finally:
            await retire(dev_env.client, settings.task_queue)


@pytest.fixture
def connector() -> Iterator[Callable[[dict[str, int]], StubConnector]]:
    made: list[StubConnector] = []

    def make(services: dict[str, int]) -> StubConnector:
        made.append(StubConnector(services))
        return made[-1]

    yield make
    for stub in made:
        stub.stop()


async def cli_json(st: Stack, *args: str) -> Any:
    run = await run_cli(*args, "-o", "json", env=cli_env(str(st.http.base_url)))
    assert run.returncode == 0, (args, run.stdout, run.stderr)
    return json.loads(run.stdout)


async def cli_table(st: Stack, *args: str) -> str:
    run = await run_cli(*args, "-o", "table", env=cli_env(str(st.http.base_url)))
    assert run.returncode == 0, (args, run.stdout, run.stderr)
    assert run.stdout.strip() and not run.stdout.lstrip().startswith(("{", "[")), run.stdout
    return run.stdout


async def test_policy_and_pool_verbs(st: Stack) -> None:
    name = st.pool_name()
    made = await cli_json(
        st,
        "policy",
        "set",
        name,
        "--min-count",
        "2",
        "--max-count",
        "3",
        "--provider",
        "local",
        "--engine",
        "memcached",
    )
    assert (made["MinCount"], made["MaxCount"], made["Provider"]) == (2, 3, "local")
    # The JSON is the API's own answer.
    assert (
        await cli_json(st, "policy", "show", name)
        == (await st.http.get(f"/v1/policy/{name}")).json()
    )
    # Flags on top of the current policy: the rest is kept.
    changed = await cli_json(st, "policy", "set", name, "--max-count", "4")
    assert (changed["MinCount"], changed["MaxCount"]) == (2, 4)
    assert name in await cli_table(st, "policy", "list")
    assert name in await cli_json(st, "policies")

    view = await st.wait_pool(name, 2)
    pools = await cli_json(st, "pool", "list")
    assert name in [p["name"] for p in pools]
    shown = await cli_table(st, "pool", "show", name)
    for node in view["nodes"]:
        assert node["address"] in shown, shown
    slots = await cli_json(st, "pool", "slots", name)
    assert slots == (await st.http.get(f"/v1/pools/{name}/slots")).json()
    assert "16383" in await cli_table(st, "pool", "slots", name)

    # One scale-out through the CLI, then the operations verbs read it back.
    run = await run_cli("scale", "out", name, "--wait", env=cli_env(str(st.http.base_url)))
    assert run.returncode == 0, run.stdout + run.stderr
    found = re.search(r"operation ([0-9a-f-]{36})", run.stdout)
    assert found, run.stdout
    op_id = found.group(1)
    # The listing reads Temporal's visibility, which lags a little behind.
    for _ in range(100):
        ops = await cli_json(st, "status", "--pool", name)
        if op_id in ops:
            break
        await asyncio.sleep(0.2)
    # The minimum's top-up and the CLI's own scale-out.
    assert op_id in ops and len(ops) == 2 and {d["Direction"] for d in ops.values()} == {"out"}
    assert (await cli_json(st, "status", op_id))["Status"] == "success"
    assert "success" in await cli_table(st, "status", op_id)
    assert (await st.wait_pool(name, 3))["config"]["max_count"] == 4

    # --api-url wins over SCALEFLOW_API_URL, given before or after the verb.
    wrong = cli_env("http://127.0.0.1:9")
    url = str(st.http.base_url)
    before = ["--api-url", url, "pool", "show", name]
    for args in (before, ["pool", "show", name, "--api-url", url]):
        run = await run_cli(*args, "-o", "json", env=wrong)
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout)["name"] == name
    unreachable = await run_cli("pool", "show", name, env=wrong)
    assert unreachable.returncode == 2 and "cannot reach the API" in unreachable.stderr

    # Refusals: the surface's error, exit 1.
    refused = await run_cli(
        "policy", "set", name, "--min-count", "9", env=cli_env(str(st.http.base_url))
    )
    assert refused.returncode == 1 and "400" in refused.stderr, refused.stderr
    assert "MinCount" in refused.stderr
    missing = await run_cli("pool", "show", unique("nope"), env=cli_env(url))
    assert missing.returncode == 1 and "404" in missing.stderr


async def test_compute_and_service_verbs(
    st: Stack, connector: Callable[[dict[str, int]], StubConnector]
) -> None:
    service, compute = unique("web"), unique("dc")
    stub = connector({service: 0})
    url = stub.start()

    made = await cli_json(st, "compute", "create", compute, url)
    assert made["name"] == compute and made["connector"] == url
    again = await run_cli("compute", "create", compute, url, env=cli_env(str(st.http.base_url)))
    assert again.returncode == 1 and "409" in again.stderr
    assert compute in [c["name"] for c in await cli_json(st, "compute", "list")]
    assert compute in await cli_table(st, "computes")
    assert (await cli_json(st, "compute", "show", compute))["connector"] == url

    scaled = await cli_json(st, "service", "scale", service, "2", "--compute", compute)
    assert scaled["desired"] == 2
    env = cli_env(str(st.http.base_url))
    up = await run_cli("service", "up", service, "--compute", compute, "--wait", env=env)
    assert up.returncode == 0, up.stdout + up.stderr
    assert "success" in up.stdout
    shown = await cli_json(st, "service", "show", service)
    assert shown["compute"] == compute and shown["running_resources"] == stub.counts[service]
    assert service in await cli_table(st, "service", "show", service)


async def test_cluster_verbs_on_an_empty_broker(st: Stack) -> None:
    assert await cli_json(st, "cluster", "list") == []
    name = unique("nope")
    run = await run_cli("cluster", "show", name, env=cli_env(str(st.http.base_url)))
    assert run.returncode == 1 and name in run.stderr
