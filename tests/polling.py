"""Waiting in tests without hammering the stack.

A wait checks at once, then backs off from 50 ms to a cap: a quick change is seen
quickly, and a long wait (a burst's eighty operations, a failover) costs a request a
second or so each instead of ten, which on two cores is CPU the stack under test needs.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

FIRST_S = 0.05
CAP_S = 1.0
FACTOR = 1.5


@dataclass
class Backoff:
    """Sleeps longer each time, up to ``cap_s``, until ``timeout_s`` has passed."""

    timeout_s: float
    first_s: float = FIRST_S
    cap_s: float = CAP_S
    delay_s: float = field(init=False)
    deadline: float = field(init=False)

    def __post_init__(self) -> None:
        self.delay_s = self.first_s
        self.deadline = time.monotonic() + self.timeout_s

    def expired(self) -> bool:
        return time.monotonic() >= self.deadline

    async def sleep(self) -> None:
        await asyncio.sleep(min(self.delay_s, max(0.0, self.deadline - time.monotonic())))
        self.delay_s = min(self.cap_s, self.delay_s * FACTOR)
