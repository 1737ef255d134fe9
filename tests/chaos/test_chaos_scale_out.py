"""Every activity boundary of scale-out, crossed by a SIGKILLed worker and by a
cancel: the operation must end right and leave the pool whole.

For each operation, a run with no fault counts its k activities from the history;
then N = 1..k are each a case of their own (run a few at a time, on one dev server).
``tests/chaos/harness.py`` says what a case checks; the table is printed here (-s) and
at the end of the run. The matrix is split over files (see conftest.py); together they
cover every operation of ``OPERATIONS``.
"""

from __future__ import annotations

from tests.chaos.conftest import boundary_test

OPS, test_every_activity_boundary = boundary_test("scale-out")
