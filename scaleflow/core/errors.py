"""Error kinds shared by update validators, activities and the API.

Update validators and activities raise ``ApplicationError`` with one of these as
its ``type``; the API maps the type to a status code in each surface's format.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Any


class ErrorKind(StrEnum):
    NO_POLICY = "NoPolicy"
    POLICY_DISABLED = "PolicyDisabled"
    NO_PROVIDER = "NoProvider"
    NO_NODES = "NoNodes"
    BOUNDS = "BoundsCrossed"
    INVALID = "InvalidRequest"
    CONFLICT = "Conflict"
    NOT_FOUND = "NotFound"
    PROVIDER = "ProviderError"


class ScaleflowError(Exception):
    """An error raised at the edge before anything reaches Temporal."""

    def __init__(
        self, kind: ErrorKind, message: str, *, code: str | None = None, details: Sequence[Any] = ()
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        # A refused update's own ``ApplicationError`` type and details, kept whole: a
        # surface with codes of its own (the broker's seed codes) answers with them.
        self.code = code
        self.details = tuple(details)
