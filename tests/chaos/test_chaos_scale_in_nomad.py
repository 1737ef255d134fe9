"""Every activity boundary of scale-in through the nomad engine, crossed by a
SIGKILLed worker and by a cancel: the operation must end right and leave the pool
whole.

For each operation, a run with no fault counts its k activities from the history;
then N = 1..k are each a case of their own (run a few at a time, on one dev server).
``tests/chaos/harness.py`` says what a case checks; the table is printed here (-s) and
at the end of the run. The matrix is split over files (see conftest.py); together they
cover every operation of ``OPERATIONS``.
"""

from __future__ import annotations

import pytest

from tests.chaos.conftest import every_boundary, operations
from tests.chaos.harness import Env, Operation

OPS = operations("scale-in-nomad")


@pytest.mark.timeout(900)
@pytest.mark.parametrize("mode", ["kill", "cancel"])
@pytest.mark.parametrize("op", OPS, ids=[o.name for o in OPS])
async def test_every_activity_boundary(env: Env, op: Operation, mode: str) -> None:
    await every_boundary(env, op, mode)
