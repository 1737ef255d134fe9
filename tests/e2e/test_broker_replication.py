"""Broker metadata replication to a second scaleflow API instance: every 10 s the primary
``PUT``s its metadata to each ``replica_addresses`` entry; the replica (a broker of its
own, ``SCALEFLOW_BROKER_NAME``) ends up with the same metadata, changes included, and an
address that does not answer is reported without holding up the others."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from temporalio.testing import WorkflowEnvironment

from scaleflow.activities import processes
from scaleflow.workflows.broker import BrokerWorkflow
from scaleflow.workflows.broker.models import broker_workflow_id
from tests.api.test_broker_api import Nodes
from tests.e2e.stack import running_api, stack, stack_settings

V2 = "/api/v2"
# Two rounds of the 10 s replication, and some.
WITHIN_S = 30.0


async def ok(http: httpx.AsyncClient, method: str, path: str, **kw: Any) -> Any:
    resp = await http.request(method, V2 + path, **kw)
    assert resp.status_code == 200, (method, path, resp.status_code, resp.text)
    return resp.json()


async def replicated(primary: httpx.AsyncClient, replica: httpx.AsyncClient) -> dict[str, Any]:
    """The replica's metadata, once it equals the primary's."""
    deadline = time.monotonic() + WITHIN_S
    while True:
        want = await ok(primary, "GET", "/metadata")
        got = await ok(replica, "GET", "/metadata")
        if got == want:
            return got
        assert time.monotonic() < deadline, f"replica has {got}, primary {want}"
        await asyncio.sleep(0.5)


async def test_metadata_reaches_a_second_api_instance(
    dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    primary_settings = stack_settings(tmp_path, dev_env.client, broker_name=f"p{tag}")
    replica_settings = primary_settings.model_copy(update={"broker_name": f"r{tag}"})
    nodes = Nodes()
    names = (primary_settings.broker_name, replica_settings.broker_name)
    try:
        async with (
            stack(primary_settings, dev_env.client) as st,
            running_api(replica_settings, dev_env.client) as replica,
        ):
            primary = st.http
            # A replica must never fail over clusters it does not run.
            await ok(
                replica, "PUT", "/config", json={"replica_addresses": [], "auto_failover": False}
            )
            replica_address = str(replica.base_url).removeprefix("http://").rstrip("/")
            nobody = f"127.0.0.1:{processes.free_port()}"
            replicas = {"replica_addresses": [nobody, replica_address]}
            await ok(primary, "PUT", "/config", json=replicas)
            for host in ("127.0.0.2", "127.0.0.3"):
                await ok(primary, "POST", "/proxies/meta", json=await nodes.proxy(host))
            await ok(primary, "PUT", "/epoch/40")

            meta = await replicated(primary, replica)
            assert meta["global_epoch"] == 40 and len(meta["all_proxies"]) == 2
            # The replica's own config is its own: replication copies metadata only.
            assert (await ok(replica, "GET", "/config"))["auto_failover"] is False

            # A later change follows, as a whole new document.
            gone = sorted(meta["all_proxies"])[0]
            await ok(primary, "DELETE", f"/proxies/meta/{gone}")
            meta = await replicated(primary, replica)
            assert gone not in meta["all_proxies"] and meta["global_epoch"] == 41

            # The address nobody answers is reported, and only that one.
            handle = dev_env.client.get_workflow_handle(broker_workflow_id(names[0]))
            failed = await handle.query(BrokerWorkflow.replication)
            assert set(failed) == {nobody}, failed
    finally:
        nodes.close()
        for name in names:
            handle = dev_env.client.get_workflow_handle(broker_workflow_id(name))
            with contextlib.suppress(Exception):
                await handle.terminate("test finished")
