"""Registers every workflow and activity on the task queue and runs the worker."""

from __future__ import annotations

import asyncio
import logging
import signal
from concurrent.futures import ThreadPoolExecutor

from temporalio.client import Client
from temporalio.worker import Worker

from scaleflow.activities.connector import ConnectorActivities
from scaleflow.activities.data_clear import DataClearActivities
from scaleflow.activities.engines import EngineActivities
from scaleflow.activities.migration import MigrationActivities
from scaleflow.activities.nodes import NodeActivities
from scaleflow.activities.stats import StatsActivities
from scaleflow.core.settings import Settings
from scaleflow.logs import setup_logging
from scaleflow.temporal import connect
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
]
log = logging.getLogger(__name__)


def activities(settings: Settings) -> list[object]:
    nodes = NodeActivities(settings)
    engines = EngineActivities(settings)
    migration = MigrationActivities()
    clear = DataClearActivities(settings)
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
        clear.flush_cache,
        clear.empty_bucket,
        clear.truncate_tables,
        *ConnectorActivities().all(),
    ]


def build_worker(client: Client, settings: Settings) -> Worker:
    # Activities are blocking (processes, sockets, boto3): they run in threads.
    return Worker(
        client,
        task_queue=settings.task_queue,
        workflows=WORKFLOWS,
        activities=activities(settings),
        activity_executor=ThreadPoolExecutor(max_workers=64),
        max_concurrent_activities=64,
    )


async def run(settings: Settings) -> None:
    client = await connect(settings, attempts=60)
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
