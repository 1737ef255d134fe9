"""``SlotMigrationWorkflow``: move slot ranges between memcached nodes, no key lost.

Each move: mark the range moving (epoch+1; clients now write the target and read
the target, then the source) → wait out the clients' map refresh → copy the keys
(``add``: never over a newer value) → switch ownership (epoch+1) → wait again →
delete the range from the source. A cancel lets moves under way finish and starts
no more, so every slot is always owned by exactly one live node.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow

from scaleflow.workflows import options

with workflow.unsafe.imports_passed_through():
    from scaleflow.core.migration_io import (
        MigrateInput,
        MigrateResult,
        MigrationInput,
        MigrationResult,
        PurgeInput,
        SlotMigrationProgress,
    )
    from scaleflow.core.models import ActivityReport
    from scaleflow.core.slots import Move, SlotMap

MAP_SIGNAL = "slot_map_changed"


async def publish(slot_map: SlotMap, notify: list[str]) -> None:
    for workflow_id in notify:
        await workflow.get_external_workflow_handle(workflow_id).signal(MAP_SIGNAL, slot_map)


@workflow.defn
class SlotMigrationWorkflow:
    def __init__(self) -> None:
        self.map = SlotMap()
        self.done: list[Move] = []
        self.moves: list[Move] = []
        self.keys = 0

    @workflow.query
    def current(self) -> SlotMap:
        return self.map

    @workflow.query
    def progress(self) -> SlotMigrationProgress:
        """The moves finished so far (what ``set_current_details`` says, as numbers)."""
        return SlotMigrationProgress(
            slots_done=sum(m.size for m in self.done),
            slots_total=sum(m.size for m in self.moves),
            keys_moved=self.keys,
            moves_done=len(self.done),
            moves_total=len(self.moves),
        )

    @workflow.run
    async def run(self, inp: MigrationInput) -> MigrationResult:
        self.map = inp.slot_map
        self.moves = list(inp.moves)
        pending = list(inp.moves)
        active: dict[asyncio.Task[None], Move] = {}
        cancelled = False
        try:
            while pending or active:
                busy = {m.source for m in active.values()}
                while len(active) < inp.limit:
                    # At most one outgoing move per source at a time.
                    nxt = next((m for m in pending if m.source not in busy), None)
                    if nxt is None:
                        break
                    pending.remove(nxt)
                    busy.add(nxt.source)
                    active[asyncio.create_task(self._move(inp, nxt))] = nxt
                finished, _ = await workflow.wait(list(active), return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
                    active.pop(task)
                    task.result()
        except asyncio.CancelledError:
            cancelled = True
            # Finish what is under way; start nothing more.
            await asyncio.gather(*active, return_exceptions=True)
        if cancelled:
            raise asyncio.CancelledError()
        return MigrationResult(slot_map=self.map, moved=self.done, keys=self.keys)

    async def _change(self, inp: MigrationInput, slot_map: SlotMap) -> None:
        self.map = slot_map
        await publish(self.map, inp.notify)

    async def _grace(self, inp: MigrationInput) -> None:
        if inp.grace_s > 0:
            await workflow.sleep(
                timedelta(seconds=inp.grace_s), summary="grace for clients to see the new map"
            )

    async def _move(self, inp: MigrationInput, mv: Move) -> None:
        await self._change(inp, self.map.marked_moving(mv))
        await self._grace(inp)
        result = await workflow.execute_activity(
            "migrate_range",
            MigrateInput(
                move=mv,
                source_address=self.map.addresses[mv.source],
                target_address=self.map.addresses[mv.target],
                rate_mb_s=inp.rate_mb_s,
            ),
            result_type=MigrateResult,
            summary=f"copy slots {mv.start}-{mv.end} to {self.map.addresses[mv.target]}",
            **options.long_running(600),
        )
        self.keys += result.keys
        await self._change(inp, self.map.moved(mv))
        self.done.append(mv)
        workflow.set_current_details(
            f"{sum(m.size for m in self.done)} of {sum(m.size for m in inp.moves)} slots "
            f"and {self.keys} keys moved"
        )
        if inp.purge:
            await self._grace(inp)
            await workflow.execute_activity(
                "purge_range",
                PurgeInput(
                    move=mv, address=inp.slot_map.addresses[mv.source], rate_mb_s=inp.rate_mb_s
                ),
                result_type=ActivityReport,
                summary=f"purge slots {mv.start}-{mv.end} on {inp.slot_map.addresses[mv.source]}",
                **options.long_running(600),
            )
