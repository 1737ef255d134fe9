"""Registers every workflow and activity on the task queue and runs the worker."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import importlib.metadata
import logging
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from temporalio import activity
from temporalio.client import Client
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
    Worker,
)
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from scaleflow.activities.broker_replication import BrokerReplicationActivities
from scaleflow.activities.connector import ConnectorActivities
from scaleflow.activities.data_clear import DataClearActivities
from scaleflow.activities.engines import EngineActivities
from scaleflow.activities.migration import MigrationActivities
from scaleflow.activities.nodes import NodeActivities
from scaleflow.activities.readings.sources import ReadingActivities
from scaleflow.activities.redis_cluster import RedisClusterActivities
from scaleflow.activities.redis_proxies import RedisProxyActivities
from scaleflow.activities.stats import StatsActivities
from scaleflow.core.settings import Settings
from scaleflow.logs import setup_logging
from scaleflow.temporal import connect
from scaleflow.workflows.broker import BrokerOperationWorkflow, BrokerWorkflow
from scaleflow.workflows.computes import ComputeRegistryWorkflow
from scaleflow.workflows.data_clear import DataClearWorkflow
from scaleflow.workflows.migration import SlotMigrationWorkflow
from scaleflow.workflows.pool import PoolWorkflow
from scaleflow.workflows.rollout import ConfigRolloutWorkflow
from scaleflow.workflows.scale_in import ScaleInWorkflow
from scaleflow.workflows.scale_out import ScaleOutWorkflow
from scaleflow.workflows.services import ServiceScaleWorkflow, ServiceWorkflow

WORKFLOWS = [
    PoolWorkflow,
    ScaleOutWorkflow,
    ScaleInWorkflow,
    SlotMigrationWorkflow,
    ConfigRolloutWorkflow,
    DataClearWorkflow,
    ComputeRegistryWorkflow,
    ServiceWorkflow,
    ServiceScaleWorkflow,
    BrokerWorkflow,
    BrokerOperationWorkflow,
]
log = logging.getLogger(__name__)


def activities(settings: Settings) -> list[object]:
    nodes = NodeActivities(settings)
    engines = EngineActivities(settings)
    migration = MigrationActivities()
    clear = DataClearActivities(settings)
    readings = ReadingActivities(settings)
    redis = RedisClusterActivities(settings)
    proxies = RedisProxyActivities(settings)
    return [
        nodes.provision_node,
        nodes.terminate_node,
        nodes.list_pool_nodes,
        engines.node_ready,
        engines.node_load,
        engines.drain_node,
        migration.migrate_range,
        migration.purge_range,
        StatsActivities(settings).pool_stats,
        readings.nomad_allocation,
        readings.prometheus_query,
        clear.flush_cache,
        clear.empty_bucket,
        clear.truncate_tables,
        *ConnectorActivities().all(),
        redis.form_redis_cluster,
        redis.migrate_redis_slots,
        redis.failover_redis_node,
        redis.remove_redis_nodes,
        redis.ping_redis_nodes,
        redis.read_redis_shards,
        proxies.provision_redis_proxy,
        proxies.destroy_redis_proxy,
        proxies.list_redis_proxies,
        BrokerReplicationActivities().replicate_broker_meta,
    ]


# ---- test hook: a worker that dies right after its N-th completed activity ----------

# Count completed activities (regular and local) into this file, one line each.
TEST_COUNTER_ENV = "SCALEFLOW_TEST_KILL_COUNTER"
# SIGKILL the worker right after the N-th completed activity returns (unset or 0: count only).
TEST_KILL_AFTER_ENV = "SCALEFLOW_TEST_KILL_AFTER_ACTIVITIES"
# Only count activities of these workflow types (comma-separated; unset: all).
TEST_WORKFLOW_TYPES_ENV = "SCALEFLOW_TEST_KILL_WORKFLOW_TYPES"


class ActivityKillHook(Interceptor):
    """Counts completed activities across the process and SIGKILLs it after the N-th.

    The kill comes before the SDK reports the result, so the server never sees it: the
    activity runs again on another worker, which is what idempotency must survive. The
    count resumes from the file, so a worker started again with the same file does not
    die at the same N twice.
    """

    def __init__(
        self, counter: Path | None, kill_after: int, workflow_types: frozenset[str]
    ) -> None:
        self.counter = counter
        self.kill_after = kill_after
        self.workflow_types = workflow_types
        self.count = 0
        if counter is not None and counter.exists():
            self.count = len(counter.read_text().splitlines())

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _CountingActivity(next, self)

    def completed(self, info: activity.Info) -> None:
        if self.workflow_types and info.workflow_type not in self.workflow_types:
            return
        # No await between read and write: activities finish on the one event loop.
        self.count += 1
        if self.counter is not None:
            kind = "local" if info.is_local else "remote"
            with self.counter.open("a") as fh:
                fh.write(f"{self.count} {info.activity_type} {kind} {info.workflow_id}\n")
        if self.count == self.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    @classmethod
    def from_env(cls) -> ActivityKillHook | None:
        counter = os.environ.get(TEST_COUNTER_ENV)
        kill_after = int(os.environ.get(TEST_KILL_AFTER_ENV) or 0)
        if not counter and not kill_after:
            return None
        types = os.environ.get(TEST_WORKFLOW_TYPES_ENV, "")
        return cls(
            Path(counter) if counter else None,
            kill_after,
            frozenset(t.strip() for t in types.split(",") if t.strip()),
        )


class _CountingActivity(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, hook: ActivityKillHook) -> None:
        super().__init__(next)
        self.hook = hook

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        result = await self.next.execute_activity(input)
        # Only returns count: a failed attempt is retried, it did not complete.
        self.hook.completed(activity.info())
        return result


# The sandbox re-imports (and compiles) every workflow module for each workflow run, and
# once more per workflow at start-up to check it: a tenth of the worker's CPU. Passed
# through, modules load once. Calls the sandbox forbids (time, randomness, I/O) are still
# refused at run time; the strict re-importing sandbox still runs in the workflow tests
# and over every saved history (tests/test_replay.py). docs/design-notes.md says more.
WORKFLOW_RUNNER = SandboxedWorkflowRunner(
    restrictions=SandboxRestrictions.default.with_passthrough_all_modules()
)


@functools.cache
def code_build_id() -> str:
    """This code's identity for Temporal: scaleflow's own sources and the SDK's version.
    The SDK's default hashes the bytecode of every loaded module, a third of a second at
    each worker start."""
    digest = hashlib.md5(usedforsecurity=False)
    digest.update(importlib.metadata.version("temporalio").encode())
    root = Path(__file__).parent
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return f"scaleflow-{digest.hexdigest()}"


def build_worker(client: Client, settings: Settings) -> Worker:
    hook = ActivityKillHook.from_env()
    if hook is not None:
        log.warning("test hook: counting activities (kill after %s)", hook.kill_after or "never")
    # Activities are blocking (processes, sockets, boto3): they run in threads.
    return Worker(
        client,
        task_queue=settings.task_queue,
        workflows=WORKFLOWS,
        activities=activities(settings),
        activity_executor=ThreadPoolExecutor(max_workers=64),
        max_concurrent_activities=64,
        interceptors=[hook] if hook is not None else [],
        workflow_runner=WORKFLOW_RUNNER,
        build_id=code_build_id(),
    )


def sdk_runtime(settings: Settings) -> Runtime | None:
    """A runtime that serves the SDK's metrics in the Prometheus format on
    ``worker_metrics_host:worker_metrics_port`` (/metrics); None (the default runtime,
    no metrics) when the port is 0. A port in use fails the start, loudly."""
    if not settings.worker_metrics_port:
        return None
    address = f"{settings.worker_metrics_host}:{settings.worker_metrics_port}"
    log.info("worker SDK metrics on http://%s/metrics", address)
    return Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=address)))


async def run(settings: Settings) -> None:
    client = await connect(settings, attempts=60, runtime=sdk_runtime(settings))
    worker = build_worker(client, settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("worker polling task_queue=%s", settings.task_queue)
    async with worker:
        await stop.wait()


def main() -> None:
    settings = Settings()
    setup_logging(settings.log_level)
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
