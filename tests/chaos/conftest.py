"""The chaos matrix's table, once more at the end of the run (with or without -s)."""

from __future__ import annotations

import pytest

from tests.chaos.harness import ROWS, table


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if ROWS:
        terminalreporter.write_sep("=", "chaos matrix")
        terminalreporter.write_line(table(ROWS))
