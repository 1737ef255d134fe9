"""The compute definitions file: good entries load, bad ones are skipped with a logged
reason, and definitions the control plane already holds are not overwritten."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from scaleflow.api import computes_file
from tests.e2e.stack import Stack, stack, stack_settings
from tests.genisys.helpers import define, eventually, retire

GOOD_AND_BAD = """
[[compute]]
name = "localdc"
connector = "http://localhost:7051"

[[compute]]
name = "no-connector"

[[compute]]
name = "ftp-dc"
connector = "ftp://localhost:7051"

[[compute]]
name = "bad name"
connector = "http://localhost:7052"

[[compute]]
name = "localdc"
connector = "http://localhost:9999"

[[compute]]
name = "awsdc"
connector = "https://connector.example:8443/genisys/"
"""


def test_read_keeps_good_entries_and_says_why_others_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "computes.toml"
    path.write_text(GOOD_AND_BAD)
    found = computes_file.read(path)
    assert [(c.name, c.connector) for c in found.computes] == [
        ("localdc", "http://localhost:7051"),
        ("awsdc", "https://connector.example:8443/genisys"),
    ]
    reasons = "\n".join(found.skipped)
    assert len(found.skipped) == 4, reasons
    assert "compute #2: needs both name and connector" in reasons
    assert "compute #3 ('ftp-dc'): Invalid connector" in reasons
    assert "compute #4 ('bad name'): Invalid compute name" in reasons
    assert "compute #5: 'localdc' is defined twice" in reasons


def test_json_and_the_default_fallback(tmp_path: Path) -> None:
    entries = [{"name": "j1", "connector": "http://a:1"}, "not a table"]
    (tmp_path / "computes.json").write_text(json.dumps({"compute": entries}))
    # The default name is computes.toml; without it, computes.json is read.
    found = computes_file.read(tmp_path / "computes.toml")
    assert found.path == tmp_path / "computes.json"
    assert [c.name for c in found.computes] == ["j1"]
    assert found.skipped == [f"{found.path}: compute #2: not a table with name and connector"]

    listed = tmp_path / "list.json"
    listed.write_text(json.dumps(entries[:1]))
    assert [c.name for c in computes_file.read(listed).computes] == ["j1"]


@pytest.mark.parametrize(
    ("name", "text", "reason"),
    [
        ("computes.toml", "[[compute]\nname=", "cannot be read"),
        ("computes.toml", "compute = 5", "must be a list"),
        ("computes.json", "{nope", "cannot be read"),
        ("computes.json", "5", "cannot be read"),
        ("computes.toml", b"\xff\xfe", "cannot be read"),
    ],
)
def test_unreadable_files_are_skipped_whole(
    tmp_path: Path, name: str, text: str | bytes, reason: str
) -> None:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    found = computes_file.read(path)
    assert found.computes == []
    assert len(found.skipped) == 1 and reason in found.skipped[0]


def test_no_file_is_no_error(tmp_path: Path) -> None:
    found = computes_file.read(tmp_path / "computes.toml")
    assert found.path is None and found.computes == [] and found.skipped == []


async def test_load_adds_new_names_and_keeps_existing_ones(
    st: Stack, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await define(st.http, "localdc", "http://changed-through-the-api:7051")
    path = tmp_path / "computes.toml"
    path.write_text(GOOD_AND_BAD)
    settings = st.settings.model_copy(update={"computes_file": path})

    with caplog.at_level(logging.INFO, logger="scaleflow.api.computes_file"):
        result = await computes_file.load(st.client, settings)
    assert result is not None
    assert result.added == ["awsdc"] and result.kept == ["localdc"]

    listing = {c["name"]: c["connector"] for c in (await st.http.get("/compute")).json()}
    assert listing == {
        "localdc": "http://changed-through-the-api:7051",
        "awsdc": "https://connector.example:8443/genisys",
    }
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 4
    assert all(m.startswith("compute definition skipped: ") for m in errors)
    assert any("ftp-dc" in m and "Invalid connector" in m for m in errors)
    assert any("localdc already defined" in r.getMessage() for r in caplog.records)


async def test_the_api_loads_the_file_when_it_starts(
    dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    path = tmp_path / "computes.json"
    path.write_text(json.dumps({"compute": [{"name": "boot-dc", "connector": "http://b:7051"}]}))
    settings = stack_settings(tmp_path, dev_env.client, computes_file=path)
    await retire(dev_env.client, settings.task_queue)
    try:
        async with stack(settings, dev_env.client) as s:

            async def loaded() -> bool:
                resp = await s.http.get("/compute/boot-dc")
                return resp.status_code == 200

            await eventually(loaded, "the definitions file was not loaded at start-up")
            assert (await s.http.get("/compute")).json() == [
                {"name": "boot-dc", "connector": "http://b:7051"}
            ]
    finally:
        await retire(dev_env.client, settings.task_queue)


async def test_a_broken_file_does_not_stop_the_api(
    dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    path = tmp_path / "computes.toml"
    path.write_text("[[compute]\n")
    settings = stack_settings(tmp_path, dev_env.client, computes_file=path)
    await retire(dev_env.client, settings.task_queue)
    try:
        async with stack(settings, dev_env.client) as s:
            assert (await s.http.get("/compute")).json() == []
            assert (await s.http.get("/v1/system/health")).status_code == 200
    finally:
        await retire(dev_env.client, settings.task_queue)
