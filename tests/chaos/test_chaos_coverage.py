"""The chaos matrix's files together cover every operation, each once."""

from __future__ import annotations

from collections import Counter

from tests.chaos import test_chaos_migration, test_chaos_rollout, test_chaos_scaling
from tests.chaos.harness import OPERATIONS


def test_every_operation_is_in_exactly_one_file() -> None:
    files = (test_chaos_scaling, test_chaos_migration, test_chaos_rollout)
    seen = Counter(op.name for f in files for op in f.OPS)
    assert seen == Counter(op.name for op in OPERATIONS)
