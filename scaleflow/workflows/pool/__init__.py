"""The pool entity: queue (scaleflow.workflows.queue), membership, statistics and the
autoscaler's readings, and validators, each in its own module."""

from scaleflow.workflows.pool.entity import MIN_COUNT_REASON, PoolWorkflow

__all__ = ["MIN_COUNT_REASON", "PoolWorkflow"]
