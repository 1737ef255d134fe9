"""``GET /v1/scale/status`` with 1,000 closed operations.

Target: median <= 100 ms. Baseline, measured in the same run: fetch the same 1,000
histories one by one (sequential ``fetch_history``) and build each document with
``build_scaling_event``, with no cache. The list of IDs is known to the baseline in
advance (its listing is not timed).

The operations are real ``ScaleOutWorkflow`` runs, started the way a pool starts them
(memo, search attributes, the ``go`` signal with a snapshot), on a pool whose provider is
``no-op`` and engine ``none`` so that their activities are instant. The first call fills
the API's cache of closed documents; it is reported as the cold figure and left out of
the median.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

from temporalio.api.workflowservice.v1 import ListWorkflowExecutionsRequest
from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from bench.harness import Series, bench_stack, print_table, ratio_line
from scaleflow.api.events import EventStore
from scaleflow.core.events import build_scaling_event, child_ids
from scaleflow.core.models import (
    Engine,
    OperationInput,
    OperationKind,
    PoolConfig,
    PoolSnapshot,
    ProviderName,
)
from scaleflow.worker import activities
from scaleflow.workflows import attributes
from scaleflow.workflows.scale_out import ScaleOutWorkflow
from tests.e2e.stack import Stack

TARGET_MS = 100.0
OPERATIONS = 1000
CONCURRENCY = 50
CALLS = 30
BASELINE_RUNS = 3
PROFILE_RUNS = 10
VISIBLE_TIMEOUT_S = 120.0


async def create_operations(st: Stack, pool: str) -> list[str]:
    config = PoolConfig(
        name=pool,
        engine=Engine.NONE,
        provider=ProviderName.NOOP,
        min_count=0,
        max_count=OPERATIONS,
    )
    gate = asyncio.Semaphore(CONCURRENCY)
    queue = f"{st.settings.task_queue}-ops"

    async def one() -> str:
        op_id = str(uuid.uuid4())
        async with gate:
            handle = await st.client.start_workflow(
                ScaleOutWorkflow.run,
                OperationInput(
                    op_id=op_id,
                    pool=pool,
                    kind=OperationKind.SCALE_OUT,
                    count=1,
                    config=config,
                    reason="bench",
                ),
                id=op_id,
                task_queue=queue,
                memo={
                    "Direction": "out",
                    "Provider": ProviderName.NOOP.value,
                    "ProviderCfg": {},
                    "Pool": pool,
                    "Reason": "bench",
                },
                search_attributes=TypedSearchAttributes(
                    [
                        SearchAttributePair(attributes.POOL, pool),
                        SearchAttributePair(attributes.DIRECTION, "out"),
                        SearchAttributePair(attributes.PROVIDER, ProviderName.NOOP.value),
                    ]
                ),
                start_signal="go",
                start_signal_args=[PoolSnapshot(nodes=[])],
            )
            await handle.result()
        return op_id

    async with Worker(
        st.client,
        task_queue=queue,
        workflows=[ScaleOutWorkflow],
        activities=activities(st.settings),
        activity_executor=ThreadPoolExecutor(max_workers=CONCURRENCY),
        max_concurrent_activities=CONCURRENCY,
        # The sandbox's per-run set-up dominates creating 1,000 short runs; the
        # histories (what the listing reads) are the same without it.
        workflow_runner=UnsandboxedWorkflowRunner(),
    ):
        return list(await asyncio.gather(*(one() for _ in range(OPERATIONS))))


async def wait_visible(client: Client, expected: set[str]) -> None:
    """Visibility is eventually consistent: wait until the listing has every operation."""
    store = EventStore(client, timedelta(hours=48))  # its own: the API's cache stays cold
    deadline = time.monotonic() + VISIBLE_TIMEOUT_S
    while time.monotonic() < deadline:
        if expected <= set(await store.operation_ids()):
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"the listing never showed all {len(expected)} operations")


async def listing_query(store: EventStore) -> str:
    """The full visibility query a fresh ``EventStore`` sends first, captured from its call."""
    sent: list[str] = []
    real = store.client.list_workflows

    def spy(query: str | None = None, **kwargs: Any) -> Any:
        sent.append(query or "")
        return real(query, **kwargs)

    store.client.list_workflows = spy  # type: ignore[method-assign]
    try:
        await store.operation_ids()
    finally:
        del store.client.list_workflows
    return sent[0]


async def list_once(st: Stack) -> float:
    t0 = time.perf_counter()
    resp = await st.http.get("/v1/scale/status")
    elapsed = time.perf_counter() - t0
    if resp.status_code != 200:
        raise RuntimeError(f"listing failed: {resp.status_code} {resp.text[:200]}")
    docs = resp.json()
    if len(docs) != OPERATIONS:
        raise RuntimeError(f"listing has {len(docs)} operations, expected {OPERATIONS}")
    return elapsed


async def listing_once(store: EventStore) -> float:
    """The store's index sync: a full listing on a fresh store's first call, then only
    operations started since its last sync (what a warm API call pays)."""
    t0 = time.perf_counter()
    ids = await store.operation_ids()
    elapsed = time.perf_counter() - t0
    if len(ids) != OPERATIONS:
        raise RuntimeError(f"listing has {len(ids)} operations, expected {OPERATIONS}")
    return elapsed


async def recent_once(store: EventStore) -> float:
    """``EventStore.recent`` with a warm cache: the listing plus assembling the documents."""
    t0 = time.perf_counter()
    docs = await store.recent()
    elapsed = time.perf_counter() - t0
    if len(docs) != OPERATIONS:
        raise RuntimeError(f"recent() has {len(docs)} operations, expected {OPERATIONS}")
    return elapsed


async def raw_listing_once(client: Client, query: str) -> float:
    """The same listing as one raw RPC: the server's share, without the SDK's decoding."""
    t0 = time.perf_counter()
    resp = await client.workflow_service.list_workflow_executions(
        ListWorkflowExecutionsRequest(namespace=client.namespace, query=query, page_size=1000)
    )
    elapsed = time.perf_counter() - t0
    # A full page comes with a next-page token even when nothing follows.
    if len(resp.executions) != OPERATIONS:
        raise RuntimeError(f"raw listing has {len(resp.executions)} operations")
    return elapsed


async def baseline_once(client: Client, ids: list[str]) -> float:
    converter = client.data_converter.payload_converter
    t0 = time.perf_counter()
    for op_id in ids:
        history = (await client.get_workflow_handle(op_id).fetch_history()).events
        # As the API does: an operation's child workflows (slot migrations) join its document.
        children = [
            (await client.get_workflow_handle(c).fetch_history()).events for c in child_ids(history)
        ]
        doc = build_scaling_event(history, converter, children)
        if doc.status != "success":
            raise RuntimeError(f"operation {op_id} is {doc.status}")
    return time.perf_counter() - t0


async def run() -> dict[str, Series]:
    print("=" * 78)
    print(f"status list: GET /v1/scale/status with {OPERATIONS} closed operations")
    print("=" * 78)
    async with bench_stack() as st:
        pool = f"bench-{uuid.uuid4().hex[:8]}"
        t0 = time.perf_counter()
        ids = await create_operations(st, pool)
        made = time.perf_counter() - t0
        await wait_visible(st.client, set(ids))
        print(f"{OPERATIONS} operations closed in {made:.1f} s ({CONCURRENCY} at a time); listed")

        cold = await list_once(st)
        warm = [await list_once(st) for _ in range(CALLS)]
        base = [await baseline_once(st.client, ids) for _ in range(BASELINE_RUNS)]
        # Where a warm call's time goes: the listing, and the server's part of it.
        store = EventStore(st.client, timedelta(hours=st.settings.event_retention_hours))
        listing = [await listing_once(store) for _ in range(PROFILE_RUNS)]
        await store.recent()  # fills this store's cache, as the cold call did the API's
        assembled = [await recent_once(store) for _ in range(PROFILE_RUNS)]
        query = await listing_query(
            EventStore(st.client, timedelta(hours=st.settings.event_retention_hours))
        )
        raw = [await raw_listing_once(st.client, query) for _ in range(PROFILE_RUNS)]

    cold_s = Series("GET /v1/scale/status, cold (fills cache)", [cold])
    warm_s = Series("GET /v1/scale/status", warm)
    baseline = Series("sequential fetch + build", base)
    recent_s = Series("  in process: EventStore.recent()", assembled)
    listing_s = Series("  of which: listing the IDs", listing)
    raw_s = Series("  of which: the listing RPC alone", raw)
    print_table("results", [warm_s, recent_s, listing_s, raw_s, cold_s, baseline])
    print(
        "  (EventStore.recent() = listing + documents from the cache; the rest of a call is "
        "FastAPI's response validation and JSON, and HTTP)"
    )
    print()
    print(ratio_line("status list", warm_s, baseline, TARGET_MS))
    print(
        f"status list, cold call: {cold_s.median_ms:.1f} ms "
        f"({cold_s.median_ms / baseline.median_ms:.2f}x the baseline)"
    )
    return {"status list": warm_s, "status list baseline": baseline, "status list cold": cold_s}
