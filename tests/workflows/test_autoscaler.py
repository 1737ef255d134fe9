"""The miss-rate autoscaler on the time-skipping server: a simulated day of
minute-by-minute readings against a scripted curve."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from temporalio.worker import Worker

from scaleflow.core.autoscale import AutoscalerConfig
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
