"""The chaos matrix's files together cover every operation, each once."""

from __future__ import annotations

import importlib
from collections import Counter
from pathlib import Path

from tests.chaos.harness import OPERATIONS


def test_every_operation_is_in_exactly_one_file() -> None:
    files = [
        importlib.import_module(f"tests.chaos.{p.stem}")
        for p in sorted(Path(__file__).parent.glob("test_chaos_*.py"))
        if p.stem != Path(__file__).stem
    ]
    assert len(files) >= 5
    seen = Counter(op.name for f in files for op in f.OPS)
    assert seen == Counter(op.name for op in OPERATIONS)
