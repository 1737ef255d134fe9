"""The dashboard's broker clusters in headless Chromium: each cluster's nodes with their
proxy, role and slot ranges, and the migrations under way, as the broker's metadata has
them (restored metadata: an expansion half done)."""

from __future__ import annotations

import contextlib
import uuid
from html.parser import HTMLParser
from pathlib import Path

from temporalio.testing import WorkflowEnvironment

from scaleflow.core.broker import chunks, clusters, migration
from scaleflow.core.broker.models import BrokerMeta
from scaleflow.workflows.broker.models import broker_workflow_id
from tests.api.test_broker_api import Nodes
from tests.api.test_dashboard import run_chromium
from tests.e2e.stack import stack, stack_settings


class ClusterRows(HTMLParser):
    """Node rows (address -> [address, proxy, role, slots]) and migration items."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, list[str]] = {}
        self.migrations: list[str] = []
        self._row: str | None = None
        self._cell: list[str] | None = None
        self._item: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "tr" and found.get("data-node-address"):
            self._row = str(found["data-node-address"])
            self.rows[self._row] = []
        elif tag == "td" and self._row is not None:
            self._cell = []
        elif tag == "li" and "data-migration" in found:
            self._item = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._row is not None and self._cell is not None:
            self.rows[self._row].append("".join(self._cell))
            self._cell = None
        elif tag == "tr":
            self._row = None
        elif tag == "li" and self._item is not None:
            self.migrations.append("".join(self._item))
            self._item = None

    def handle_data(self, data: str) -> None:
        for part in (self._cell, self._item):
            if part is not None:
                part.append(data)


def ranges_text(ranges: list[tuple[int, int]]) -> str:
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


async def test_dashboard_shows_clusters_slots_and_migrations(
    dev_env: WorkflowEnvironment, tmp_path: Path, chromium: str
) -> None:
    settings = stack_settings(tmp_path, dev_env.client, broker_name=f"d{uuid.uuid4().hex[:8]}")
    nodes = Nodes()
    try:
        async with stack(settings, dev_env.client) as st:
            for host in ("127.0.0.2", "127.0.0.3"):
                for _ in range(2):
                    resp = await st.http.post("/api/v2/proxies/meta", json=await nodes.proxy(host))
                    assert resp.status_code == 200, resp.text
            meta = BrokerMeta.model_validate((await st.http.get("/api/v2/metadata")).json())
            meta = clusters.create_cluster(meta, "c1", 4)
            meta = migration.expand(clusters.add_nodes(meta, "c1", 4), "c1")
            resp = await st.http.put("/api/v2/metadata", json=meta.model_dump(mode="json"))
            assert resp.status_code == 200, resp.text

            url = f"{st.http.base_url}".rstrip("/") + "/dashboard"
            dom = await run_chromium(chromium, tmp_path, url, "--dump-dom")
    finally:
        nodes.close()
        with contextlib.suppress(Exception):
            handle = dev_env.client.get_workflow_handle(broker_workflow_id(settings.broker_name))
            await handle.terminate("test finished")

    assert 'data-loaded="true"' in dom, dom[-3000:]
    assert 'data-cluster="c1"' in dom
    page = ClusterRows()
    page.feed(dom)
    cluster = meta.clusters["c1"]
    assert set(page.rows) == {n.address for n in cluster.nodes}
    for node in cluster.nodes:
        address, proxy, role, slots = page.rows[node.address]
        assert (address, proxy, role) == (node.address, node.proxy_address, node.repl.role.value)
        for slot in node.slots:
            assert ranges_text(slot.range_list) in slots, (node.address, slots)
    moves = chunks.running_migrations(cluster)
    assert moves and len(page.migrations) == len(moves)
    for task in moves:
        move = task.slot_range.meta
        assert move is not None
        line = f"{move.src_node_address} -> {move.dst_node_address}"
        assert any(line in item for item in page.migrations), page.migrations
    assert "migrating to" in dom and "importing from" in dom
