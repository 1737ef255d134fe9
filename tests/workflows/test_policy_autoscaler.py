"""A policy's own autoscaler on the time-skipping server: Chemtrail's checks over a
scripted CPU curve, read through the Nomad double by the real reading activity."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pytest
from temporalio import activity
from temporalio.client import WorkflowHandle
from temporalio.worker import Worker

from scaleflow.activities.readings.nomad_allocation import NomadAllocationReader
from scaleflow.core.autoscaling.decision import DecisionRecord
from scaleflow.core.autoscaling.policy_settings import AutoscalingSettings, Check
from scaleflow.core.autoscaling.readings import Readings
from scaleflow.core.autoscaling.source_io import NomadAllocationInput
from scaleflow.core.models import PoolView
from scaleflow.core.settings import Settings
from scaleflow.worker import WORKFLOWS
from scaleflow.workflows.pool import PoolWorkflow
from tests.conftest import time_skipping_env
from tests.doubles.nomad_double import NomadApiDouble, nomad_double
from tests.workflows.fakes import FakeCloud
from tests.workflows.test_pool import settle, start_pool

# Percent of the class's CPU allocated, one value per reading (the last repeats).
CURVE = [50, 90, 90, 90, 90, 90, 90, 50, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 50, 50]
INTERVAL_S = 180.0
COOLDOWN_OUT_S = 600.0
COOLDOWN_IN_S = 1200.0
LOW, HIGH = 1, 4
CHECKS = {
    "cpu-high": Check(
        resource="cpu",
        comparison_operator="greater-than",
        comparison_percentage=80,
        action="scale-out",
    ),
    "cpu-low": Check(
        resource="cpu",
        comparison_operator="less-than",
        comparison_percentage=20,
        action="scale-in",
    ),
    # Disabled: it would scale in on every reading.
    "memory-low": Check(
        enabled=False,
        resource="memory",
        comparison_operator="less-than",
        comparison_percentage=100,
        action="scale-in",
    ),
}


@dataclass
class ScriptedNomad:
    """Before each reading, the double's allocations follow the next value of the curve;
    the reading itself is the real activity over HTTP."""

    double: NomadApiDouble
    url: str
    node_class: str
    reads: int = 0
    allocs: list[str] = field(default_factory=list)

    def activity(self) -> object:
        reader = NomadAllocationReader(Settings(nomad_address=self.url))

        @activity.defn(name="read_nomad_allocation")
        async def read_nomad_allocation(req: NomadAllocationInput) -> Readings:
            assert req.node_class == self.node_class
            percent = CURVE[min(self.reads, len(CURVE) - 1)]
            self.reads += 1
            for aid in self.allocs:
                self.double.allocs.pop(aid, None)
            # Two nodes of 4000 MHz: the share is over 8000 MHz.
            self.allocs = [self.double.add_alloc(n, cpu_shares=percent * 40) for n in self.nodes]
            return await asyncio.to_thread(reader.read, req)

        return read_nomad_allocation

    @property
    def nodes(self) -> list[str]:
        return [n.id for n in self.double.nodes.values() if n.node_class == self.node_class]


@pytest.fixture
def nomad() -> Iterator[tuple[NomadApiDouble, str]]:
    with nomad_double() as pair:
        yield pair


def oracle(decisions: list[DecisionRecord]) -> list[int | None]:
    """Chemtrail's checks with both cooldowns, written out again: the count each
    reading settles on (None: stays), from the times the decisions were made."""
    size, last = LOW, None
    out: list[int | None] = []
    for i, d in enumerate(decisions):
        cpu = CURVE[min(i, len(CURVE) - 1)]
        new: int | None = None
        if cpu > 80 and size < HIGH:
            new = size + 1 if cooled(last, d.at, COOLDOWN_OUT_S) else None
        elif cpu < 20 and size > LOW:
            new = size - 1 if cooled(last, d.at, COOLDOWN_IN_S) else None
        if new is not None:
            size, last = new, d.at
        out.append(new)
    return out


def cooled(last: datetime | None, now: datetime, wait_s: float) -> bool:
    return last is None or now >= last + timedelta(seconds=wait_s)


async def run_curve(
    nomad: tuple[NomadApiDouble, str], *, dry_run: bool
) -> tuple[list[DecisionRecord], PoolView, FakeCloud, WorkflowHandle]:
    double, url = nomad
    name_class = f"c{uuid.uuid4().hex[:6]}"
    for _ in range(2):
        double.add_node(name_class)
    script = ScriptedNomad(double, url, name_class)
    async with await time_skipping_env() as env:
        fake = FakeCloud(addressless=True)
        async with Worker(
            env.client,
            task_queue="policy",
            workflows=WORKFLOWS,
            activities=[*fake.activities(), script.activity()],
        ):
            pool = await start_pool(
                env.client,
                "policy",
                min_count=LOW,
                max_count=HIGH,
                provider="no-op",
                engine="none",
                node_class=name_class,
                checks=CHECKS,
                autoscaling=AutoscalingSettings(
                    enabled=True,
                    interval_s=INTERVAL_S,
                    cooldown_out_s=COOLDOWN_OUT_S,
                    cooldown_in_s=COOLDOWN_IN_S,
                    dry_run=dry_run,
                ),
            )
            await settle(pool, env.client, LOW)
            await env.sleep(timedelta(seconds=INTERVAL_S * len(CURVE) + 30))
            decisions = await pool.query(PoolWorkflow.decisions)
            view = await pool.query(PoolWorkflow.view)
            await pool.terminate("test finished")
    return decisions, view, fake, pool


async def test_a_cpu_curve_drives_the_pool_out_and_in_honouring_both_cooldowns(
    nomad: tuple[NomadApiDouble, str],
) -> None:
    decisions, view, fake, _ = await run_curve(nomad, dry_run=False)
    assert len(decisions) >= len(CURVE) - 1, decisions
    expected = oracle(decisions)
    assert [d.new_count for d in decisions] == expected
    # Every settled count was queued as an operation, and only those.
    assert [d.acted for d in decisions] == [n is not None for n in expected]
    assert all(d.operation for d in decisions if d.acted)
    assert all(d.rule == "threshold/checks" and d.source == "nomad" for d in decisions)
    assert not any(d.dry_run for d in decisions)
    # The curve reached both bounds' neighbourhoods and both cooldowns held a resize.
    results = [d.result for d in decisions]
    assert any("held: scale-out cooldown" in r for r in results), results
    assert any("held: scale-in cooldown" in r for r in results), results
    assert max(n for n in expected if n is not None) >= 3
    first_out = next(d for d in decisions if d.acted)
    assert first_out.result == "check cpu-high: cpu 90.0% > 80% -> scale-out by 1"
    # 256 MB of 8192 MB on each node.
    assert first_out.reading == "cpu 90.0%, memory 3.1%"
    final = [n for n in expected if n is not None][-1]
    assert len(view.nodes) == final
    assert len(fake.provisioned) - len(fake.terminated) == final


async def test_dry_run_queues_nothing_and_records_every_decision(
    nomad: tuple[NomadApiDouble, str],
) -> None:
    decisions, view, fake, _ = await run_curve(nomad, dry_run=True)
    assert len(decisions) >= len(CURVE) - 1, decisions
    assert all(d.dry_run and not d.acted and d.operation is None for d in decisions)
    would = [d for d in decisions if d.new_count is not None]
    assert would and all(r.result.endswith("; dry run: not queued") for r in would)
    # The pool stayed at its minimum: only the top-up ever ran.
    assert len(view.nodes) == LOW and view.queue == []
    assert len(fake.provisioned) == LOW and fake.terminated == []
