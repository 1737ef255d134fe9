"""Data clear: flush every cache node, then (when asked) empty S3 and truncate RDS.

Each step is its own retryable activity with its own event line; a step that fails
for good fails the operation, and the steps after it do not run.
"""

from __future__ import annotations

from temporalio import workflow

from scaleflow.workflows import options
from scaleflow.workflows.operation import OperationBase

with workflow.unsafe.imports_passed_through():
    from scaleflow.core.data_clear_io import (
        EMPTY_BUCKET_WORK_S,
        FLUSH_WORK_S,
        TRUNCATE_WORK_S,
        ClearInput,
        EmptyBucketResult,
        FlushInput,
        FlushResult,
        TruncateResult,
    )
    from scaleflow.core.models import (
        DataClearSpec,
        NodeState,
        OperationInput,
        OperationResult,
    )


@workflow.defn
class DataClearWorkflow(OperationBase):
    @workflow.run
    async def run(self, inp: OperationInput) -> OperationResult:
        spec = inp.clear or DataClearSpec()
        snapshot = await self.wait_turn(inp)
        nodes = [n for n in snapshot.nodes if n.state == NodeState.READY and n.address]
        await workflow.execute_activity(
            "flush_cache",
            FlushInput(pool=inp.pool, engine=inp.config.engine, nodes=nodes),
            result_type=FlushResult,
            summary=f"flush the cache of {len(nodes)} nodes of pool {inp.pool}",
            **options.long_running(FLUSH_WORK_S, attempts=5),
        )
        target = ClearInput(pool=inp.pool, op_id=inp.op_id)
        if spec.s3:
            await workflow.execute_activity(
                "empty_bucket",
                target,
                result_type=EmptyBucketResult,
                summary=f"empty the S3 bucket of pool {inp.pool}",
                # The listing resumes where a failed attempt stopped.
                **options.long_running(EMPTY_BUCKET_WORK_S, attempts=10),
            )
        if spec.rds:
            await workflow.execute_activity(
                "truncate_tables",
                target,
                result_type=TruncateResult,
                summary=f"truncate the RDS tables of pool {inp.pool}",
                **options.long_running(TRUNCATE_WORK_S, attempts=10),
            )
        # Nothing joins or leaves the pool.
        return OperationResult()
