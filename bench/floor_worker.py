"""``python -m bench.floor_worker``: the worker of the throughput benchmark's floor.

A parent workflow starts N bare children (no activities, no signals) at once and awaits
them. The worker runs in a process of its own and is configured as scaleflow's worker is
(SCALEFLOW_TEMPORAL_ADDRESS, SCALEFLOW_TASK_QUEUE; Pydantic converter; sandboxed
workflows; the SDK's default slots and pollers), so the floor pays the same process and
SDK costs as the pools do and differs only in what the workflows do.
"""

from __future__ import annotations

import asyncio
import signal

from temporalio import workflow

FLOOR_PARENT = "FloorParent"
BARE_CHILD = "BareChild"


@workflow.defn(name=BARE_CHILD)
class BareChild:
    @workflow.run
    async def run(self) -> None:
        return None


@workflow.defn(name=FLOOR_PARENT)
class FloorParent:
    @workflow.run
    async def run(self, children: int) -> int:
        me = workflow.info().workflow_id
        handles = await asyncio.gather(
            *(workflow.start_child_workflow(BareChild.run, id=f"{me}-{i}") for i in range(children))
        )
        await asyncio.gather(*handles)
        return children


async def serve() -> None:
    from temporalio.worker import Worker

    from scaleflow.core.settings import Settings
    from scaleflow.logs import setup_logging
    from scaleflow.temporal import connect

    settings = Settings()
    setup_logging(settings.log_level)
    client = await connect(settings, attempts=60)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Worker(client, task_queue=settings.task_queue, workflows=[FloorParent, BareChild]):
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(serve())
