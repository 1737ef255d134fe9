"""Saved histories replay against today's workflow code without non-determinism."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from scaleflow.worker import WORKFLOWS

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))
TEXTS = {p.stem: p.read_text() for p in HISTORIES}


def test_histories_are_kept() -> None:
    names = {p.stem for p in HISTORIES}
    assert {"pool", "scale_out_success", "scale_in_drain_deadline"} <= names


@pytest.mark.parametrize("name", sorted(TEXTS))
async def test_replay(name: str) -> None:
    history = WorkflowHistory.from_json(f"replay-{name}", TEXTS[name])
    replayer = Replayer(workflows=WORKFLOWS, data_converter=pydantic_data_converter)
    result = await replayer.replay_workflow(history, raise_on_replay_failure=True)
    assert result.replay_failure is None
