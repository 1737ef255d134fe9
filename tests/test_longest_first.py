"""The files conftest.py hands out first exist (a renamed file would silently go last)."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import LONGEST_FIRST

ROOT = Path(__file__).resolve().parent.parent


def test_every_file_named_longest_first_exists() -> None:
    missing = [p for p in LONGEST_FIRST if not (ROOT / p).is_file()]
    assert not missing
    assert len(set(LONGEST_FIRST)) == len(LONGEST_FIRST)
