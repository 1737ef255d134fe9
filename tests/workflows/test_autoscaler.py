"""The miss-rate autoscaler on the time-skipping server: a simulated day of
minute-by-minute readings against a scripted curve."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio.worker import Worker

from scaleflow.core.autoscale import AutoscalerConfig, AutoscalerState, decide
from scaleflow.core.models import PoolView
from scaleflow.worker import WORKFLOWS
from scaleflow.workflows.pool import PoolWorkflow
from tests.conftest import time_skipping_env
from tests.workflows.fakes import FakeCloud
from tests.workflows.test_pool import settle, start_pool

MINUTES = 24 * 60


def curve(i: int) -> float:
    """A miss rate that swings across both thresholds a few times a day."""
    return round(0.5 + 0.35 * math.sin(2 * math.pi * i / 240) + 0.05 * math.sin(i / 7), 3)


def oracle(rates: list[float], size: int, low: int, high: int) -> list[int]:
    """The seed's rule, written out independently: the size before each reading."""
    sizes, previous = [], None
    for rate in rates:
        sizes.append(size)
        if previous is not None and rate == previous:
            previous = None  # an identical reading skips one round
            continue
        previous = rate
        if rate > 0.6:
            size = max(low, min(high, round(size * 1.5)))
        elif rate < 0.4:
            size = max(low, min(high, round(size * 0.5)))
    sizes.append(size)
    return sizes


@dataclass
class Day:
    rates: list[float]
    readings: int
    observed: list[int]  # the pool's size at each reading
    final: PoolView


async def simulate_day(**worker_options: Any) -> Day:
    """A day of one-minute readings of ``curve`` on a fresh time-skipping server."""
    rates = [curve(i) for i in range(MINUTES)]
    async with await time_skipping_env() as env:
        # The pool's nodes are no-op nodes: resizes change the slot map without copying.
        fake = FakeCloud(miss_rates=rates, addressless=True)
        async with Worker(
            env.client,
            task_queue="day",
            workflows=WORKFLOWS,
            activities=fake.activities(),
            **worker_options,
        ):
            pool = await start_pool(env.client, "day", min_count=1, max_count=8, provider="no-op")
            await settle(pool, env.client, 1)
            fake.readings = 0
            await pool.execute_update(
                PoolWorkflow.set_autoscaler, AutoscalerConfig(auto_mode=True, interval_s=60)
            )
            for _ in range(MINUTES // 60):
                # An hour at a time: one skip of a whole day outlasts the RPC's timeout.
                await env.sleep(timedelta(hours=1))
            readings = fake.readings
            observed = [len(s.nodes) for s in fake.stats_seen[-readings:]]
            expected = oracle(rates[:readings], 1, 1, 8)
            view = await settle(pool, env.client, expected[-1])
            await pool.terminate("test finished")
    return Day(rates, readings, observed, view)


async def test_a_day_of_autoscaling_follows_the_rule() -> None:
    day = await simulate_day()
    expected = oracle(day.rates[: day.readings], 1, 1, 8)
    # Each continue-as-new starts the minute's timer again, delaying one reading.
    assert day.readings >= MINUTES - 5
    assert day.observed == expected[: day.readings]
    assert all(1 <= n <= 8 for n in day.observed)
    assert len(set(day.observed)) >= 4, "the curve drove the pool through several sizes"
    assert day.final.autoscaler.auto_mode


async def test_the_miss_rate_rule_keeps_a_cooldown_per_direction_and_a_dry_run() -> None:
    async with await time_skipping_env() as env:
        fake = FakeCloud(addressless=True)
        async with Worker(
            env.client, task_queue="dirs", workflows=WORKFLOWS, activities=fake.activities()
        ):
            pool = await start_pool(env.client, "dirs", min_count=1, max_count=8, provider="no-op")
            await settle(pool, env.client, 1)
            # Growing may follow any resize at once; shrinking waits 10 minutes.
            cfg = AutoscalerConfig(cooldown_s=0, cooldown_out_s=0, cooldown_in_s=600)
            await pool.execute_update(PoolWorkflow.set_autoscaler, cfg)

            # Forced readings ignore cooldowns, so these go through the main loop's
            # rule as the reading loop's would: drive state through the rule directly.
            state = AutoscalerState()
            now = datetime(2024, 1, 1, tzinfo=UTC)
            grown = decide(2, 0.9, cfg, state, now, 1, 8)
            assert grown.size == 3
            shrink = decide(3, 0.1, cfg, grown.state, now + timedelta(seconds=60), 1, 8)
            assert shrink.size is None and shrink.reason.endswith("in cooldown")
            regrow = decide(3, 0.95, cfg, grown.state, now + timedelta(seconds=60), 1, 8)
            assert regrow.size == 4
            later = decide(3, 0.1, cfg, grown.state, now + timedelta(seconds=600), 1, 8)
            assert later.size == 2

            # Dry run: the rule answers, the decision is recorded, nothing is queued.
            dry = cfg.model_copy(update={"dry_run": True})
            await pool.execute_update(PoolWorkflow.set_autoscaler, dry)
            answer = await pool.execute_update(PoolWorkflow.evaluate, 0.9)
            assert answer.endswith("; dry run: not queued") and not answer.startswith("autoscaler")
            view = await settle(pool, env.client, 1)
            assert view.queue == [] and len(fake.provisioned) == 1
            (record,) = await pool.query(PoolWorkflow.decisions)
            assert record.dry_run and not record.acted and record.new_count == 2
            assert record.rule == "threshold/miss-rate" and record.reading == "miss rate 0.900"

            # Live again: the same reading grows the pool, and says it did.
            await pool.execute_update(PoolWorkflow.set_autoscaler, cfg)
            answer = await pool.execute_update(PoolWorkflow.evaluate, 0.9)
            assert answer.startswith("autoscaler: miss rate 0.900 > max 0.6")
            await settle(pool, env.client, 2)
            last = (await pool.query(PoolWorkflow.decisions))[-1]
            assert last.acted and last.operation and not last.dry_run
            await pool.terminate("test finished")
