"""The optional compute definitions file, loaded when the API starts.

``SCALEFLOW_COMPUTES_FILE`` (default ``computes.toml``, relative to the directory the
API runs in, the project root) holds::

    [[compute]]
    name = "localdc"
    connector = "http://localhost:7051"

A ``.json`` file holds the same, ``{"compute": [{"name": ..., "connector": ...}]}``
(or just the list). With the default setting and no ``computes.toml``, a
``computes.json`` next to it is read instead.

Loading is never fatal: a file that cannot be read or parsed, or an entry that is not a
valid definition, is logged with the reason and skipped. A definition the control
plane already holds is kept as it is: the file only adds names it does not know, so a
definition changed through the API survives the next start.
"""

from __future__ import annotations

import asyncio
import json
import logging
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from temporalio.client import Client

from scaleflow.api.routes.genisys import registry_update
from scaleflow.core.genisys import (
    BatchResult,
    Compute,
    ComputeBatch,
    connector_problem,
    name_problem,
)
from scaleflow.core.settings import Settings
from scaleflow.workflows.computes import ComputeRegistryWorkflow

log = logging.getLogger(__name__)
DEFAULT_NAME = "computes.toml"
# The load waits for a worker to take the registry's update; it gives up after this.
LOAD_TIMEOUT_S = 120.0


@dataclass
class FileRead:
    path: Path | None
    computes: list[Compute] = field(default_factory=list)
    # One line per skipped entry (or for the whole file), saying why.
    skipped: list[str] = field(default_factory=list)


def locate(configured: Path) -> Path | None:
    if configured.is_file():
        return configured
    if configured.name == DEFAULT_NAME:
        fallback = configured.with_suffix(".json")
        if fallback.is_file():
            return fallback
    return None


def _parse(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        data = json.loads(text)
        return data if isinstance(data, list) else data.get("compute", [])
    return tomllib.loads(text).get("compute", [])


def read(configured: Path) -> FileRead:
    """The valid definitions of the file, and why each other entry was skipped."""
    path = locate(configured)
    result = FileRead(path=path)
    if path is None:
        return result
    try:
        entries = _parse(path)
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as exc:
        # tomllib.TOMLDecodeError and json.JSONDecodeError are ValueErrors.
        result.skipped.append(f"{path}: cannot be read as compute definitions: {exc}")
        return result
    if not isinstance(entries, list):
        result.skipped.append(f"{path}: 'compute' must be a list of definitions")
        return result
    seen: set[str] = set()
    for i, entry in enumerate(entries, start=1):
        where = f"{path}: compute #{i}"
        if not isinstance(entry, dict):
            result.skipped.append(f"{where}: not a table with name and connector")
            continue
        name, connector = entry.get("name"), entry.get("connector")
        if name is None or connector is None:
            result.skipped.append(f"{where}: needs both name and connector")
            continue
        problem = name_problem("compute", name) or connector_problem(connector)
        if problem:
            result.skipped.append(f"{where} ({name!r}): {problem}")
            continue
        if name in seen:
            result.skipped.append(f"{where}: {name!r} is defined twice; the first one is used")
            continue
        seen.add(name)
        result.computes.append(Compute(name=name, connector=connector))
    return result


async def load(client: Client, settings: Settings) -> BatchResult | None:
    """Read the file and add its new definitions to the registry; logs what it did."""
    found = read(settings.computes_file)
    for reason in found.skipped:
        log.error("compute definition skipped: %s", reason)
    if not found.computes:
        if found.path is not None:
            log.info("no compute definitions to load from %s", found.path)
        return None
    result: BatchResult = await registry_update(
        client, settings, ComputeRegistryWorkflow.add_missing, ComputeBatch(computes=found.computes)
    )
    for name in result.kept:
        log.info("compute %s already defined: %s does not overwrite it", name, found.path)
    log.info("loaded computes %s from %s", result.added, found.path)
    return result


async def load_quietly(client: Client, settings: Settings) -> None:
    """``load`` for the API's start-up: any failure is logged, never raised."""
    try:
        async with asyncio.timeout(LOAD_TIMEOUT_S):
            await load(client, settings)
    except Exception:
        log.exception("could not load compute definitions from %s", settings.computes_file)
