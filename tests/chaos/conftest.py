"""The chaos matrix's set-up, shared by its files: one file per group of operations, so
that pytest-xdist (``--dist loadfile``) spreads the matrix over its workers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment

from tests.chaos.harness import OPERATIONS, Aws, Env, Operation, Row, record, run_case, run_matrix
from tests.chaos.harness import table as rows_table
from tests.doubles.nomad_double import start_nomad_double

# One baseline per operation, shared by its kill and cancel matrices.
BASELINES: dict[str, Row] = {}


def operations(*names: str) -> list[Operation]:
    found = [o for o in OPERATIONS if o.name in names]
    assert len(found) == len(names), f"unknown operations among {names}"
    return found


@pytest.fixture
def env(
    request: pytest.FixtureRequest,
    dev_env: WorkflowEnvironment,
    tmp_path_factory: pytest.TempPathFactory,
    op: Operation,
) -> Iterator[Env]:
    def tmp(name: str) -> Path:
        return tmp_path_factory.mktemp(name)

    if not op.nomad:
        yield Env(dev_env.client, tmp)
        return
    # Fixtures of the nomad engine's cases only: moto's server and the Nomad double.
    moto_url: str = request.getfixturevalue("moto_url")
    make_asg: Callable[..., str] = request.getfixturevalue("make_asg")
    autoscaling: Any = request.getfixturevalue("autoscaling")
    ec2: Any = request.getfixturevalue("ec2")
    double, url = start_nomad_double()
    try:
        aws = Aws(moto_url, autoscaling, ec2, make_asg, double, url)
        yield Env(dev_env.client, tmp, aws)
    finally:
        double.stop()


async def baseline(env: Env, op: Operation) -> Row:
    if op.name not in BASELINES:
        row = await run_case(env, op, 0, "none")
        BASELINES[op.name] = row
        record([row])
        print(f"\n{op.name}: {len(row.activities)} activities: {row.activities}")
    return BASELINES[op.name]


async def every_boundary(env: Env, op: Operation, mode: str) -> None:
    """A fault (``kill`` or ``cancel``) after each of the operation's k activities."""
    base = await baseline(env, op)
    assert base.ok, f"the run without a fault already fails:\n{rows_table([base])}"
    k = len(base.activities)
    assert k > 0, "the operation ran no activity"
    rows = await run_matrix(env, op, mode, range(1, k + 1))
    record(rows)
    print(f"\n{rows_table([base, *rows])}")
    failed = [r for r in rows if not r.ok]
    assert not failed, f"{len(failed)} of {len(rows)} cases failed:\n{rows_table(failed)}"


def boundary_test(*names: str) -> tuple[list[Operation], Callable[..., Any]]:
    """The operations of one matrix file and its test: a fault (``kill`` or ``cancel``)
    after each of their activities. A file says ``OPS, test_every_activity_boundary =
    boundary_test(...)``, so each file is its own unit for ``--dist loadfile``."""
    ops = operations(*names)

    @pytest.mark.timeout(900)
    @pytest.mark.parametrize("mode", ["kill", "cancel"])
    @pytest.mark.parametrize("op", ops, ids=[o.name for o in ops])
    async def test_every_activity_boundary(env: Env, op: Operation, mode: str) -> None:
        await every_boundary(env, op, mode)

    return ops, test_every_activity_boundary
