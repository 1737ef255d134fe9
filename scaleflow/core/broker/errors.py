"""The broker's error codes, with the HTTP status the seed gives each.

Where the seed and undermoon differ, the seed wins: ``FREE_NODE_NOT_FOUND`` and
``INVALID_CONFIG`` are 409 (undermoon answers 404 and 400). The last three codes are
not in the seed; they come from undermoon's base broker API and keep its statuses.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class BrokerErrorCode(StrEnum):
    INVALID_CLUSTER_NAME = "INVALID_CLUSTER_NAME"
    INVALID_NODE_NUMBER = "INVALID_NODE_NUMBER"
    INVALID_PROXY_ADDRESS = "INVALID_PROXY_ADDRESS"
    CLUSTER_NOT_FOUND = "CLUSTER_NOT_FOUND"
    PROXY_NOT_FOUND = "PROXY_NOT_FOUND"
    ALREADY_EXISTED = "ALREADY_EXISTED"
    IN_USE = "IN_USE"
    NO_AVAILABLE_RESOURCE = "NO_AVAILABLE_RESOURCE"
    RESOURCE_NOT_BALANCE = "RESOURCE_NOT_BALANCE"
    MIGRATION_RUNNING = "MIGRATION_RUNNING"
    NODE_NUMBER_CHANGING = "NODE_NUMBER_CHANGING"
    NODE_NUM_ALREADY_ENOUGH = "NODE_NUM_ALREADY_ENOUGH"
    FREE_NODE_NOT_FOUND = "FREE_NODE_NOT_FOUND"
    FREE_NODE_FOUND = "FREE_NODE_FOUND"
    INVALID_CONFIG = "INVALID_CONFIG"
    INVALID_META_VERSION = "INVALID_META_VERSION"
    EPOCH_SMALLER_THAN_CURRENT = "EPOCH_SMALLER_THAN_CURRENT"
    RETRY = "RETRY"
    # Base broker API (undermoon), not in the seed.
    INVALID_MIGRATION_TASK = "INVALID_MIGRATION_TASK"
    MIGRATION_TASK_NOT_FOUND = "MIGRATION_TASK_NOT_FOUND"


C = BrokerErrorCode
HTTP_STATUS: dict[BrokerErrorCode, int] = {
    C.INVALID_CLUSTER_NAME: 400,
    C.INVALID_NODE_NUMBER: 400,
    C.INVALID_PROXY_ADDRESS: 400,
    C.CLUSTER_NOT_FOUND: 404,
    C.PROXY_NOT_FOUND: 404,
    C.ALREADY_EXISTED: 409,
    C.IN_USE: 409,
    C.NO_AVAILABLE_RESOURCE: 409,
    C.RESOURCE_NOT_BALANCE: 409,
    C.MIGRATION_RUNNING: 409,
    C.NODE_NUMBER_CHANGING: 409,
    C.NODE_NUM_ALREADY_ENOUGH: 409,
    C.FREE_NODE_NOT_FOUND: 409,
    C.FREE_NODE_FOUND: 409,
    C.INVALID_CONFIG: 409,
    C.INVALID_META_VERSION: 409,
    C.EPOCH_SMALLER_THAN_CURRENT: 409,
    C.RETRY: 409,
    C.INVALID_MIGRATION_TASK: 400,
    C.MIGRATION_TASK_NOT_FOUND: 404,
}


class BrokerError(Exception):
    """A refused broker request; ``body()`` is the seed's JSON error body."""

    def __init__(
        self,
        code: BrokerErrorCode,
        message: str = "",
        *,
        key: str | None = None,
        value: str | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}" if message else str(code))
        self.code = code
        self.message = message or str(code)
        # Only INVALID_CONFIG carries these, as the seed's body shows.
        self.key = key
        self.value = value

    @property
    def status(self) -> int:
        return HTTP_STATUS[self.code]

    def body(self) -> dict[str, Any]:
        if self.code is BrokerErrorCode.INVALID_CONFIG:
            return {
                "error": str(self.code),
                "key": self.key or "",
                "value": self.value or "",
                "message": self.message,
            }
        return {"error": str(self.code)}
