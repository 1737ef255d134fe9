"""Slot migration activities: copy a range's keys to their new node, purge the old."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from pymemcache.client.base import Client
from temporalio import activity

from scaleflow.activities.memcached_wire import Adder, metadump
from scaleflow.activities.notes import note
from scaleflow.client.wire import MultiGet, split_address
from scaleflow.core.migration_io import MigrateInput, MigrateResult, MigrationProgress, PurgeInput
from scaleflow.core.models import ActivityReport
from scaleflow.core.slots import slot_of

SOURCE = "memcached"
Heartbeat = Callable[..., None]


def _heartbeat(*details: Any) -> None:
    if activity.in_activity():
        activity.heartbeat(*details)


def _resume_point() -> MigrationProgress | None:
    if not activity.in_activity():
        return None
    details = activity.info().heartbeat_details
    if not details:
        return None
    return MigrationProgress.model_validate(details[0])


class Pace:
    """Sleeps as needed to keep a loop under ``rate_mb_s`` megabytes a second."""

    def __init__(self, rate_mb_s: float) -> None:
        self.rate = rate_mb_s * 1e6
        self.started = time.monotonic()
        self.done = 0

    def spent(self, nbytes: int) -> None:
        if self.rate <= 0:
            return
        self.done += nbytes
        ahead = self.done / self.rate - (time.monotonic() - self.started)
        if ahead > 0:
            time.sleep(ahead)


def keys_in_range(address: str, start: int, end: int) -> list[tuple[bytes, int]]:
    """The node's live keys whose slot is in [start, end], sorted."""
    now = time.time()
    found = [
        (k, exp)
        for k, exp in metadump(address)
        if start <= slot_of(k) <= end and (exp <= 0 or exp > now)
    ]
    return sorted(found)


def copy_range(
    req: MigrateInput,
    heartbeat: Heartbeat = _heartbeat,
    resume: MigrationProgress | None = None,
) -> MigrateResult:
    mv = req.move
    keys = keys_in_range(req.source_address, mv.start, mv.end)
    copied, size, skip_after = 0, 0, b""
    if resume is not None:
        copied, size, skip_after = resume.keys, resume.bytes, bytes.fromhex(resume.last_key)
        keys = [item for item in keys if item[0] > skip_after]
    expiry = dict(keys)
    pace = Pace(req.rate_mb_s)
    source = MultiGet(req.source_address, timeout_s=30.0)
    target = Adder(req.target_address)
    batches = [keys[i : i + req.batch] for i in range(0, len(keys), req.batch)]
    try:
        if batches:
            source.send([k for k, _ in batches[0]])
        for i, batch in enumerate(batches):
            # Keys expired or evicted since the dump are simply not returned.
            found = source.receive()
            if i + 1 < len(batches):
                # The source reads the next batch while this one is written.
                source.send([k for k, _ in batches[i + 1]])
            # exp is absolute; memcached reads an exptime past 30 days as a timestamp.
            items = [(k, flags, max(expiry[k], 0), v) for k, flags, v in found]
            size += sum(len(v) for _, _, v in found)
            target.add_many(items)
            # Per-key work dominates small values: each key counts as at least 1 KiB.
            pace.spent(sum(max(len(v), 1024) for _, _, v in found))
            copied += len(items)
            heartbeat(
                MigrationProgress(last_key=batch[-1][0].hex(), keys=copied, bytes=size).model_dump()
            )
        target.flush()
    finally:
        source.close()
        target.close()
    events = []
    if resume is not None:
        events.append(
            note(f"resumed migration of slots {mv.label()} after {resume.keys:,} keys", SOURCE)
        )
    events.append(
        note(f"migrated slots {mv.label()}: {copied:,} keys to node {req.target_address}", SOURCE)
    )
    resumed = resume.keys if resume else 0
    return MigrateResult(keys=copied, bytes=size, resumed_after=resumed, events=events)


def purge_range(req: PurgeInput) -> ActivityReport:
    mv = req.move
    keys = [k for k, _ in keys_in_range(req.address, mv.start, mv.end)]
    client = Client(split_address(req.address), timeout=30)
    # A delete costs about what a small copy does: pace it by key count.
    pace = Pace(req.rate_mb_s)
    try:
        for i in range(0, len(keys), 1000):
            client.delete_many(keys[i : i + 1000], noreply=False)
            pace.spent(len(keys[i : i + 1000]) * 1024)
    finally:
        client.close()
    return ActivityReport(
        events=[
            note(
                f"removed {len(keys):,} keys of slots {mv.label()} from node {req.address}", SOURCE
            )
        ]
    )


class MigrationActivities:
    @activity.defn(name="migrate_range")
    def migrate_range(self, req: MigrateInput) -> MigrateResult:
        return copy_range(req, _heartbeat, _resume_point())

    @activity.defn(name="purge_range")
    def purge_range(self, req: PurgeInput) -> ActivityReport:
        return purge_range(req)
