"""The read verbs' tables: every builder renders the API's shapes (no server)."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from rich.console import Console

from scaleflow import cli_output as out
from scaleflow.core.broker.models import Cluster


def rendered(data: Any, build: out.TableBuilder) -> str:
    buf = io.StringIO()
    console = Console(file=buf, width=200, color_system=None)
    out.emit(data, "table", build, console)
    return buf.getvalue()


def test_json_output_is_the_data(capsys: pytest.CaptureFixture[str]) -> None:
    data = {"ID": "x", "nested": [1, {"a": None}]}
    out.emit(data, "json", out.progress_table, Console())
    assert json.loads(capsys.readouterr().out) == data


def test_operation_and_operations_tables() -> None:
    doc = {
        "Events": [
            {
                "Timestamp": 1_795_334_980_063_508_013,
                "Message": "scaling [activity] has started",
                "Source": "chemtrail",
            },
            {
                "Timestamp": 1_795_334_980_443_497_393,
                "Message": "scaling activity has successfully completed",
                "Source": "chemtrail",
            },
        ],
        "Direction": "out",
        "LastUpdate": 1_795_334_980_443_497_393,
        "Status": "success",
        "Provider": "local",
        "ProviderCfg": {},
    }
    one = rendered(doc, lambda d: out.operation_table(d, "op-1"))
    # Brackets in a message are text, not markup.
    assert "scaling [activity] has started" in one and "operation op-1" in one
    assert "success" in one and "│" in one
    many = rendered({"op-1": doc}, out.operations_table)
    assert "op-1" in many and "scaling activity has successfully completed" in many


def test_pool_tables() -> None:
    view = {
        "name": "web",
        "config": {
            "name": "web",
            "engine": "memcached",
            "provider": "local",
            "min_count": 1,
            "max_count": 8,
            "capacity_mb": 64,
            "eviction": "lru",
        },
        "has_policy": True,
        "nodes": [
            {
                "id": "n1",
                "address": "127.0.0.1:1",
                "state": "ready",
                "created_at": "2026-01-01T00:00:00Z",
            }
        ],
        "queue": [],
        "running": None,
    }
    listing = rendered([view], out.pools_table)
    assert "web" in listing and "1/1" in listing and "1..8" in listing
    one = rendered(view, out.pool_table)
    assert "127.0.0.1:1" in one and "capacity_mb" in one
    slots = {
        "epoch": 3,
        "ranges": [{"start": 0, "end": 16383, "node": "n1"}],
        "moving": [{"start": 0, "end": 99, "source": "n1", "target": "n2", "epoch": 3}],
        "addresses": {"n1": "127.0.0.1:1"},
    }
    text = rendered(slots, out.slots_table)
    assert "0-16383" in text and "epoch 3" in text and "0-99" in text


def test_policy_compute_service_cache_tables() -> None:
    policy = {
        "Enabled": True,
        "Class": "web",
        "MinCount": 1,
        "MaxCount": 4,
        "Provider": "local",
        "Checks": {"cpu-high": {}},
    }
    assert "cpu-high" in rendered({"web": policy}, out.policies_table)
    assert "MaxCount" in rendered(policy, out.policy_table)
    computes = [{"name": "c1", "connector": "http://127.0.0.1:7051"}]
    assert "http://127.0.0.1:7051" in rendered(computes, out.computes_table)
    assert "c1" in rendered(computes[0], out.compute_table)
    assert "desired" in rendered({"service": "s", "desired": 2}, out.service_table)
    cache = {"size": 2, "resize_pool_option": "manual", "pool_node_list": ["127.0.0.1:1"]}
    assert "manual" in rendered(cache, out.cache_table)


def test_cluster_tables() -> None:
    meta = {
        "name": "c1",
        "epoch": 7,
        "nodes": [
            {
                "address": "127.0.0.2:7001",
                "proxy_address": "127.0.0.2:7000",
                "cluster_name": "c1",
                "repl": {"role": "master", "peers": []},
                "slots": [
                    {"range_list": [[0, 8191]], "tag": "None"},
                    {
                        "range_list": [[8192, 9000]],
                        "tag": {
                            "Migrating": {
                                "epoch": 7,
                                "src_proxy_address": "127.0.0.2:7000",
                                "src_node_address": "127.0.0.2:7001",
                                "dst_proxy_address": "127.0.0.3:7000",
                                "dst_node_address": "127.0.0.3:7001",
                            }
                        },
                    },
                ],
            },
        ],
    }
    cluster = Cluster.model_validate(meta).model_dump(mode="json")  # the API's own shape
    text = rendered({"cluster": cluster}, out.cluster_table)
    assert "cluster c1, epoch 7" in text and "0-8191" in text
    assert "8192-9000 (migrating to 127.0.0.3:7001)" in text
    infos = [{"name": "c1", "node_number": 4, "node_number_with_slots": 4, "is_migrating": False}]
    assert "c1" in rendered(infos, out.clusters_table)
