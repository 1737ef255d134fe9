"""Where a client reads the pool's slot map from."""

from __future__ import annotations

import os
from typing import Protocol

import httpx

from scaleflow.core.slots import SlotMap


class SlotMapSource(Protocol):
    def fetch(self, known_epoch: int | None) -> SlotMap | None:
        """The current map, or None when it is still ``known_epoch``."""
        ...


class HttpSlotMapSource:
    """Polls ``GET /v1/pools/{pool}/slots``; an unchanged map costs a 304."""

    def __init__(
        self, api_url: str, pool: str, timeout_s: float = 5.0, token: str | None = None
    ) -> None:
        # The API may require its token for reads (SCALEFLOW_API_READ_TOKEN_REQUIRED):
        # the one given, else SCALEFLOW_API_TOKEN from the environment, as the CLI does.
        token = (token if token is not None else os.environ.get("SCALEFLOW_API_TOKEN", "")).strip()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=api_url.rstrip("/"), timeout=timeout_s, headers=headers)
        self.path = f"/v1/pools/{pool}/slots"

    def fetch(self, known_epoch: int | None) -> SlotMap | None:
        headers = {"If-None-Match": f'"{known_epoch}"'} if known_epoch is not None else {}
        resp = self.http.get(self.path, headers=headers)
        if resp.status_code == 304:
            return None
        resp.raise_for_status()
        return SlotMap.model_validate_json(resp.content)

    def close(self) -> None:
        self.http.close()
