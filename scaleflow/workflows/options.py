"""Timeouts and retry policies of activities, in one place."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio.common import RetryPolicy
from temporalio.workflow import ActivityCancellationType

# Short heartbeat timeouts: a killed worker's activity is retried within seconds.
HEARTBEAT = timedelta(seconds=5)


def quick(attempts: int = 5) -> dict[str, Any]:
    return {
        "start_to_close_timeout": timedelta(seconds=30),
        "retry_policy": RetryPolicy(
            maximum_interval=timedelta(seconds=5), maximum_attempts=attempts
        ),
    }


def provision() -> dict[str, Any]:
    # Waited out on cancel, so a node being made is known before compensation runs.
    return {
        "start_to_close_timeout": timedelta(seconds=60),
        "retry_policy": RetryPolicy(maximum_interval=timedelta(seconds=10), maximum_attempts=10),
        "cancellation_type": ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
    }


def terminate() -> dict[str, Any]:
    # Retried without end: a node must never be leaked.
    return {
        "start_to_close_timeout": timedelta(seconds=120),
        "retry_policy": RetryPolicy(maximum_interval=timedelta(seconds=30)),
        "cancellation_type": ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
    }


def long_running(seconds: float, attempts: int = 0) -> dict[str, Any]:
    return {
        "start_to_close_timeout": timedelta(seconds=seconds + 120),
        "heartbeat_timeout": HEARTBEAT,
        "retry_policy": RetryPolicy(
            maximum_interval=timedelta(seconds=5), maximum_attempts=attempts
        ),
    }


def local() -> dict[str, Any]:
    """A short local activity; waited out on cancel, like provision."""
    return {
        "start_to_close_timeout": timedelta(seconds=8),
        "retry_policy": RetryPolicy(maximum_interval=timedelta(seconds=5), maximum_attempts=10),
        "cancellation_type": ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
    }
