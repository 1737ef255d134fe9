"""A burst of concurrent changes on the broker entity through HTTP: exact answers (each
proxy registered once, removed once), no 5xx, one epoch per change, and the entity's
history replays afterwards (kept as ``tests/histories/broker_burst.json``)."""

from __future__ import annotations

import contextlib
import uuid
from collections import Counter
from pathlib import Path

from temporalio.testing import WorkflowEnvironment

from scaleflow.workflows.broker.models import broker_workflow_id
from tests.api.test_broker_api import Nodes
from tests.bursts import assert_replays, burst, no_server_errors
from tests.e2e.stack import stack, stack_settings

BURST = 100
DISTINCT = 90  # and 10 repeats: each must get ALREADY_EXISTED
GONE = 50  # removed twice each: one 200, one PROXY_NOT_FOUND


def answers(resps: list) -> Counter[tuple[int, str]]:
    return Counter(
        (r.status_code, "" if r.status_code == 200 else r.json()["error"]) for r in resps
    )


async def test_a_burst_of_proxy_changes_gets_exact_answers(
    dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    name = f"b{uuid.uuid4().hex[:8]}"
    settings = stack_settings(tmp_path, dev_env.client, broker_name=name)
    nodes = Nodes()
    try:
        bodies = [await nodes.proxy(f"127.0.0.{2 + i % 4}") for i in range(DISTINCT)]
        sent = bodies + bodies[: BURST - DISTINCT]
        async with stack(settings, dev_env.client) as st:
            adds = await burst(BURST, lambda i: st.http.post("/api/v2/proxies/meta", json=sent[i]))
            no_server_errors(adds)
            assert answers(adds) == {(200, ""): DISTINCT, (409, "ALREADY_EXISTED"): 10}

            gone = [b["proxy_address"] for b in bodies[:GONE]] * 2
            removes = await burst(
                BURST, lambda i: st.http.delete(f"/api/v2/proxies/meta/{gone[i]}")
            )
            no_server_errors(removes)
            assert answers(removes) == {(200, ""): GONE, (404, "PROXY_NOT_FOUND"): GONE}

            meta = (await st.http.get("/api/v2/metadata")).json()
            left = {b["proxy_address"] for b in bodies[GONE:]}
            assert set(meta["all_proxies"]) == left
            # One epoch per change that was taken, none for a refusal.
            assert meta["global_epoch"] == DISTINCT + GONE
            taken = [r for r in adds + removes if r.is_success]
            epochs = sorted(int(r.headers["X-Broker-Epoch"]) for r in taken)
            assert epochs == list(range(1, DISTINCT + GONE + 1))
            await assert_replays(st.client, broker_workflow_id(name), keep_as="broker_burst")
    finally:
        nodes.close()
        with contextlib.suppress(Exception):
            await dev_env.client.get_workflow_handle(broker_workflow_id(name)).terminate("done")
