"""Stacks whose default pool is a pool of the test's own (a unique name)."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from tests.e2e.stack import ROOT, Stack, stack, stack_settings


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium; the project's system set-up installs it when missing."""
    if shutil.which("chromium") is None:
        script = str(ROOT / "scripts" / "install-system-deps.sh")
        subprocess.run([script, "--with-browser"], check=True, timeout=1800)
    found = shutil.which("chromium")
    assert found, "scripts/install-system-deps.sh did not install chromium"
    return found


@pytest.fixture
async def bare(dev_env: WorkflowEnvironment, tmp_path: Path) -> AsyncIterator[Stack]:
    """A stack whose default pool does not exist yet."""
    name = f"mc-{uuid.uuid4().hex[:8]}"
    settings = stack_settings(tmp_path, dev_env.client, default_pool_name=name)
    async with stack(settings, dev_env.client) as s:
        s.pools.append(name)
        yield s


@pytest.fixture
async def st(bare: Stack) -> Stack:
    """The stack with its default pool: local memcached, 1 node (min 1, max 8)."""
    resp = await bare.put_policy(bare.settings.default_pool_name, MinCount=1, MaxCount=8)
    assert resp.status_code == 200, resp.text
    await bare.wait_pool(bare.settings.default_pool_name, 1)
    return bare
