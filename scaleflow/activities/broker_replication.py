"""Broker metadata replication: ``PUT`` the whole metadata to each replica broker, as
undermoon's ``sync_meta_interval`` loop does."""

from __future__ import annotations

import asyncio

import httpx
from temporalio import activity

from scaleflow.core.broker.activity_io import ReplicateMetaInput, ReplicateMetaResult
from scaleflow.core.broker.errors import BrokerErrorCode

PUT_TIMEOUT_S = 5.0
# A replica that already holds newer metadata answers this: nothing to do.
ALREADY_NEWER = BrokerErrorCode.EPOCH_SMALLER_THAN_CURRENT.value


async def put_meta(client: httpx.AsyncClient, address: str, body: bytes) -> str | None:
    """Why the PUT to ``address`` failed, or ``None``."""
    try:
        resp = await client.put(
            f"http://{address}/api/v2/metadata",
            content=body,
            headers={"content-type": "application/json"},
        )
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if resp.is_success:
        return None
    try:
        code = resp.json().get("error")
    except ValueError:
        code = None
    if code == ALREADY_NEWER:
        return None
    return f"HTTP {resp.status_code} {code or resp.text[:200]}"


class BrokerReplicationActivities:
    @activity.defn(name="replicate_broker_meta")
    async def replicate_broker_meta(self, req: ReplicateMetaInput) -> ReplicateMetaResult:
        body = req.meta.model_dump_json().encode()
        async with httpx.AsyncClient(timeout=PUT_TIMEOUT_S) as client:
            answers = await asyncio.gather(*(put_meta(client, a, body) for a in req.addresses))
        failed = {a: why for a, why in zip(req.addresses, answers, strict=True) if why}
        for address, why in failed.items():
            activity.logger.warning("metadata not replicated to %s: %s", address, why)
        return ReplicateMetaResult(failed=failed)
