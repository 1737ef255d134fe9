"""Helpers for the event lines activities return."""

from __future__ import annotations

import time

from temporalio.exceptions import ApplicationError

from scaleflow.core.errors import ErrorKind
from scaleflow.core.models import CONTROL_SOURCE, EventNote


def note(message: str, source: str = CONTROL_SOURCE) -> EventNote:
    return EventNote(message=message, source=source, at_ns=time.time_ns())


def fatal(message: str, source: str = CONTROL_SOURCE, kind: ErrorKind = ErrorKind.PROVIDER):
    """An error retrying cannot fix; ``source`` shows in the scaling events."""
    return ApplicationError(message, {"source": source}, type=kind.value, non_retryable=True)


def retryable(message: str, source: str = CONTROL_SOURCE) -> ApplicationError:
    return ApplicationError(message, {"source": source}, type=ErrorKind.PROVIDER.value)
