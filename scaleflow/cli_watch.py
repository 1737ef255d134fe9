"""``--wait``: follow an operation until it ends, live.

Each event of the operation's document (``GET /v1/scale/status/{id}``) is printed
once, as it appears; below them a status line and, while slots move, a progress bar of
slots and keys moved (``GET /v1/scale/progress/{id}``). On a terminal the two lines
redraw in place (``rich.live``); into a pipe, the events come line by line and the final
status and bar once at the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from pydantic import ValidationError
from rich.console import Console, Group
from rich.live import Live
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from scaleflow.cli_http import ApiClient, Reply
from scaleflow.cli_output import FINAL_STYLE, clock
from scaleflow.core.migration_io import OperationProgress

CLOSED = frozenset(FINAL_STYLE)
POLL_S = 0.5
# An operation just started may take a moment to show in its document.
APPEAR_S = 30.0
WAITING = {"started": "queued behind the pool's other operations", "in-progress": "in progress"}


class OperationGone(Exception):
    """The operation's document could not be read: unknown id, or an API error."""


class Watch:
    """The live region: a status line and the slots bar."""

    def __init__(self, op_id: str, label: str) -> None:
        self.op_id = op_id
        self.label = label
        self.spinner = SpinnerColumn(finished_text="•")
        self.status = Progress(self.spinner, TextColumn("{task.description}"), TimeElapsedColumn())
        self.status_task: TaskID = self.status.add_task(self._line("started"), total=1)
        self.slots = Progress(
            TextColumn("slots"),
            BarColumn(bar_width=40),
            MofNCompleteColumn(),
            TextColumn("{task.fields[keys]:,} keys moved"),
        )
        # Hidden until the operation moves slots (a pool without a slot map never does).
        self.slots_task: TaskID = self.slots.add_task("", total=None, visible=False, keys=0)

    def _line(self, status: str) -> str:
        return f"{self.label}: {WAITING.get(status, status)}"

    def renderable(self) -> Group:
        return Group(self.status, self.slots)

    def show_status(self, status: str) -> None:
        self.status.update(self.status_task, description=self._line(status))

    def show_progress(self, progress: OperationProgress) -> None:
        if progress.slots_total <= 0:
            return
        self.slots.update(
            self.slots_task,
            total=progress.slots_total,
            completed=progress.slots_done,
            keys=progress.keys_moved,
            visible=True,
        )

    def finish(self, status: str) -> None:
        self.spinner.finished_text = Text("✓" if status == "success" else "✗")
        self.status.update(self.status_task, completed=1, description=self._line(status))
        self.status.stop_task(self.status_task)


def event_line(event: dict[str, object]) -> Text:
    stamp = event.get("Timestamp")
    line = Text(clock(stamp if isinstance(stamp, int) else None)[11:], style="dim")
    line.append(f"  {event.get('Source', '')!s:<10} ", style="cyan")
    line.append(str(event.get("Message", "")))  # as Text: brackets are not markup
    return line


def read_progress(api: ApiClient, op_id: str) -> OperationProgress | None:
    """The progress, if this API serves it (an older one does not: no bar then)."""
    reply = api.get(f"/v1/scale/progress/{op_id}")
    if not reply.ok:
        return None
    try:
        return OperationProgress.model_validate(reply.body)
    except ValidationError:
        return None


def watch(
    api: ApiClient,
    op_id: str,
    console: Console,
    *,
    label: str | None = None,
    fresh: bool = False,
    poll_s: float = POLL_S,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Follow ``op_id`` until it ends; its final status.

    ``fresh``: the operation was just started, so a 404 for a little while means its
    document is not there yet rather than an unknown id."""
    view = Watch(op_id, label or f"operation {op_id}")
    printed = 0
    appear_by = time.monotonic() + (APPEAR_S if fresh else 0)
    status = "started"
    with Live(view.renderable(), console=console, refresh_per_second=8, transient=False) as live:
        while True:
            reply: Reply = api.get(f"/v1/scale/status/{op_id}")
            if reply.status == 404 and time.monotonic() < appear_by:
                sleep(poll_s)
                continue
            if not reply.ok or not isinstance(reply.body, dict):
                raise OperationGone(reply.error_message())
            events = reply.body.get("Events") or []
            for event in events[printed:]:
                live.console.print(event_line(event), soft_wrap=True)
            printed = max(printed, len(events))
            status = str(reply.body.get("Status", "started"))
            progress = read_progress(api, op_id)
            if progress is not None:
                view.show_progress(progress)
            if status in CLOSED:
                view.finish(status)
                live.refresh()
                return status
            view.show_status(status)
            sleep(poll_s)
