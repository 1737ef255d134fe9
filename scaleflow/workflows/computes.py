"""``ComputeRegistryWorkflow`` (id ``genisys/computes``): the genisys compute definitions.

The definitions live in this entity's state, so the control plane keeps them, not a
process's memory: they survive API and worker restarts because Temporal keeps the
history (the dev server on disk, in ``var/temporal.db``). Changes are Updates whose
validators reject a duplicate or unknown name before it reaches the history.
"""

from __future__ import annotations

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from scaleflow.core.errors import ErrorKind
    from scaleflow.core.genisys import (
        BatchResult,
        Compute,
        ComputeBatch,
        RegistryInit,
        connector_problem,
        name_problem,
    )


def _reject(kind: ErrorKind, message: str) -> ApplicationError:
    return ApplicationError(message, type=kind.value, non_retryable=True)


def _check(compute: Compute) -> None:
    # Models validate on decode too; checked again so the rule holds whoever calls.
    problem = name_problem("compute", compute.name) or connector_problem(compute.connector)
    if problem:
        raise _reject(ErrorKind.INVALID, problem)


@workflow.defn
class ComputeRegistryWorkflow:
    @workflow.init
    def __init__(self, init: RegistryInit) -> None:
        self.computes: dict[str, Compute] = {c.name: c for c in init.computes}

    @workflow.run
    async def run(self, init: RegistryInit) -> None:
        # Only updates change the state; the run just rolls its history over when long.
        await workflow.wait_condition(lambda: workflow.info().is_continue_as_new_suggested())
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.continue_as_new(RegistryInit(computes=self.definitions()))

    @workflow.update
    def create(self, compute: Compute) -> Compute:
        self.computes[compute.name] = compute
        return compute

    @create.validator
    def _check_create(self, compute: Compute) -> None:
        _check(compute)
        if compute.name in self.computes:
            raise _reject(ErrorKind.CONFLICT, f"Compute {compute.name} already exists.")

    @workflow.update
    def replace(self, compute: Compute) -> Compute:
        self.computes[compute.name] = compute
        return compute

    @replace.validator
    def _check_replace(self, compute: Compute) -> None:
        _check(compute)
        if compute.name not in self.computes:
            raise _reject(ErrorKind.NOT_FOUND, f"Undefined compute: {compute.name}.")

    @workflow.update
    def add_missing(self, batch: ComputeBatch) -> BatchResult:
        """Adds the definitions not yet known; never overwrites one (definitions file)."""
        result = BatchResult()
        for compute in batch.computes:
            if compute.name in self.computes:
                result.kept.append(compute.name)
            else:
                self.computes[compute.name] = compute
                result.added.append(compute.name)
        return result

    @add_missing.validator
    def _check_batch(self, batch: ComputeBatch) -> None:
        for compute in batch.computes:
            _check(compute)

    @workflow.update
    def ensure(self) -> list[Compute]:
        return self.definitions()

    @workflow.query
    def definitions(self) -> list[Compute]:
        return sorted(self.computes.values(), key=lambda c: c.name)
