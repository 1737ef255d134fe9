"""The memcache auto-scaler (001) and manager app (002) surfaces on a real stack: every
endpoint's success shape, bad input answered 400 in the originals' envelope, JSON and
form bodies, and never a 5xx."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from pymemcache.client.base import Client as Memcache

from tests.e2e.stack import Stack

STATS_KEYS = {
    "miss_rate",
    "hit_rate",
    "number_of_items_in_cache",
    "total_size_of_items_in_cache",
    "number_of_requests_served_per_minute",
}


def pool(st: Stack) -> str:
    return st.settings.default_pool_name


def ok(resp: httpx.Response) -> Any:
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert set(body) == {"success", "content"} and body["success"] == "true", body
    return body["content"]


def fail(resp: httpx.Response, status: int, *fragments: str) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["success"] == "false", body
    assert set(body) == {"success", "error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == status
    message = body["error"]["message"]
    for frag in fragments:
        assert frag in message, message
    return message


async def op(st: Stack, resp: httpx.Response) -> dict[str, Any]:
    """An operation's answer: its ID, then its scaling events once it succeeded."""
    content = ok(resp)
    uuid.UUID(content["ID"])
    return await st.wait_status(content["ID"])


def form(fields: dict[str, Any]) -> dict[str, Any]:
    """Fields as a multipart body (httpx sends ``files`` as multipart/form-data)."""
    return {"files": {k: (None, str(v)) for k, v in fields.items()}}


async def test_reads(st: Stack) -> None:
    view = await st.pool(pool(st))
    node = view["nodes"][0]

    assert ok(await st.http.get("/api/manager/pool_node_list")) == {
        "pool_node_list": [node["address"]]
    }
    assert ok(await st.http.get("/api/manager/poolsize")) == {"size": 1}
    assert ok(await st.http.get("/api/manager/poolsize/config")) == {
        "resize_pool_option": "manual",
        "resize_pool_parameters": {},
    }
    stats = ok(await st.http.get("/api/manager/aggregate_stats"))
    assert set(stats) == STATS_KEYS
    assert all(len(points) == 30 for points in stats.values())
    assert ok(await st.http.get("/api/scaler/cache_list")) == {"cache_pool_ids": [node["id"]]}
    for method in ("GET", "POST"):
        listed = ok(await st.http.request(method, "/api/scaler/list"))
        assert listed == [
            {
                "id": node["id"],
                "address": node["address"],
                "state": "ready",
                "created_at": listed[0]["created_at"],
            }
        ]
    home = await st.http.get("/api/scaler/")
    assert home.status_code == 200 and "text/html" in home.headers["content-type"]
    assert pool(st) in home.text


async def test_manual_resize_json_and_form(st: Stack) -> None:
    doc = await op(
        st, await st.http.post("/api/manager/poolsize/manual", json={"change": "increase"})
    )
    assert doc["Direction"] == "out"
    assert ok(await st.http.get("/api/manager/poolsize")) == {"size": 2}
    urlencoded = await st.http.post("/api/manager/poolsize/manual", data={"change": "decrease"})
    assert (await op(st, urlencoded))["Direction"] == "in"
    await st.wait_pool(pool(st), 1)
    multipart = await st.http.post("/api/manager/poolsize/manual", **form({"change": "increase"}))
    await op(st, multipart)
    await st.wait_pool(pool(st), 2)
    # curl -d '{"change": ...}' labels JSON as a urlencoded form.
    curl = await st.http.post(
        "/api/manager/poolsize/manual",
        content=b'{"change": "decrease"}',
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    await op(st, curl)
    await st.wait_pool(pool(st), 1)

    fail(
        await st.http.post("/api/manager/poolsize/manual", json={"change": "decrease"}),
        400,
        "reached to minimum",
    )
    for bad in ({"change": "sideways"}, {}, {"change": 3}):
        fail(
            await st.http.post("/api/manager/poolsize/manual", json=bad),
            400,
            "Parameter change can only be increase or decrease",
            repr(bad.get("change")),
        )
    fail(
        await st.http.post("/api/manager/poolsize/manual", data={"change": "up"}),
        400,
        "Parameter change can only be increase or decrease (got 'up')",
    )
    assert (await st.put_policy(pool(st), MaxCount=1)).status_code == 200
    fail(
        await st.http.post("/api/manager/poolsize/manual", json={"change": "increase"}),
        400,
        "reached to maximum",
    )


async def test_autoscaler_configuration(st: Stack) -> None:
    params = {
        "max_miss_rate_threshold": 0.7,
        "min_miss_rate_threshold": 0.2,
        "expand_ratio": 2,
        "shrink_ratio": 0.5,
    }
    auto = ok(await st.http.post("/api/manager/poolsize/automatic", data=params))
    assert auto == {"resize_pool_option": "automatic", "resize_pool_parameters": params}
    assert ok(await st.http.get("/api/manager/poolsize/config")) == auto
    view = await st.pool(pool(st))
    assert view["autoscaler"]["auto_mode"] is True and view["autoscaler"]["expand_ratio"] == 2

    # A field left out keeps its value; JSON and forms alike.
    cfg = ok(await st.http.post("/api/scaler/config", json={"expand_ratio": 3, "auto_mode": False}))
    assert cfg["expand_ratio"] == 3 and cfg["auto_mode"] is False
    assert cfg["max_miss_rate_threshold"] == 0.7
    assert ok(await st.http.get("/api/manager/poolsize/config")) == {
        "resize_pool_option": "manual",
        "resize_pool_parameters": {},
    }
    cfg = ok(await st.http.post("/api/scaler/config", **form({"auto_mode": "true"})))
    assert cfg["auto_mode"] is True and cfg["expand_ratio"] == 3

    # A manual resize switches the auto-scaler off.
    await op(st, await st.http.post("/api/manager/poolsize/manual", json={"change": "increase"}))
    assert ok(await st.http.get("/api/manager/poolsize/config"))["resize_pool_option"] == "manual"


BAD_SCALER = [
    ({"max_miss_rate_threshold": 1.5}, ["max_miss_rate_threshold", "1.5"]),
    ({"min_miss_rate_threshold": -0.1}, ["min_miss_rate_threshold", "-0.1"]),
    ({"max_miss_rate_threshold": "high"}, ["max_miss_rate_threshold", "'high'"]),
    (
        {"min_miss_rate_threshold": 0.7, "max_miss_rate_threshold": 0.6},
        ["min_miss_rate_threshold (0.7) must be less than max_miss_rate_threshold (0.6)"],
    ),
    ({"min_miss_rate_threshold": 0.6}, ["min_miss_rate_threshold (0.6)", "(0.6)"]),
    ({"expand_ratio": 1}, ["expand_ratio", "greater than 1", "1"]),
    ({"expand_ratio": 0.5}, ["expand_ratio", "0.5"]),
    ({"shrink_ratio": 1}, ["shrink_ratio", "less than 1", "1"]),
    ({"shrink_ratio": 0}, ["shrink_ratio", "greater than 0", "0"]),
]


@pytest.mark.parametrize(("fields", "fragments"), BAD_SCALER)
async def test_bad_autoscaler_values(st: Stack, fields: dict, fragments: list[str]) -> None:
    for path in ("/api/scaler/config", "/api/manager/poolsize/automatic"):
        fail(await st.http.post(path, json=fields), 400, *fragments)
        fail(await st.http.post(path, data=fields), 400, *fragments)
    fail(await st.http.post("/api/scaler/config", json={"auto_mode": "maybe"}), 400, "auto_mode")
    # Nothing was applied.
    assert ok(await st.http.get("/api/manager/poolsize/config"))["resize_pool_option"] == "manual"


async def test_set_test_miss_rate(st: Stack) -> None:
    resp = await st.http.post("/api/scaler/set_test_miss_rate", json={"test_miss_rate": 0.9})
    content = ok(resp)
    assert content["test_miss_rate"] == 0.9
    assert "clip(round(1 * 1.5), 1, 8) = 2" in content["result"], content
    await st.wait_pool(pool(st), 2)
    resp = await st.http.post("/api/scaler/set_test_miss_rate", data={"test_miss_rate": "0.1"})
    assert "= 1" in ok(resp)["result"]
    await st.wait_pool(pool(st), 1)
    resp = await st.http.post("/api/scaler/set_test_miss_rate", json={"test_miss_rate": 0.5})
    assert "within thresholds" in ok(resp)["result"]

    for bad, frag in ((1.5, "1.5"), (-1, "-1"), ("lots", "'lots'")):
        fail(
            await st.http.post("/api/scaler/set_test_miss_rate", json={"test_miss_rate": bad}),
            400,
            "test_miss_rate",
            frag,
        )
    fail(await st.http.post("/api/scaler/set_test_miss_rate"), 400, "test_miss_rate", "required")


async def test_manager_config_rolls_out(st: Stack) -> None:
    doc = await op(
        st,
        await st.http.post(
            "/api/manager/config", json={"capacity": 32, "replacement_policy": "lru"}
        ),
    )
    assert doc["Direction"] == "rollout"
    view = await st.wait_pool(pool(st), 1)
    assert view["config"]["capacity_mb"] == 32
    resp = await st.http.post(
        "/api/manager/config", data={"capacity": "16", "replacement_policy": "none"}
    )
    assert ok(resp)["replacement_policy"] == "none"
    await st.wait_status(ok(resp)["ID"])
    view = await st.wait_pool(pool(st), 1)
    assert (view["config"]["capacity_mb"], view["config"]["eviction"]) == (16, "none")

    for bad, fragments in (
        ({"capacity": 32, "replacement_policy": "rr"}, ["replacement_policy", "'rr'", "LRU", "-M"]),
        ({"capacity": 32, "replacement_policy": "random"}, ["replacement_policy", "'random'"]),
        ({"capacity": 32, "replacement_policy": "lfu"}, ["replacement_policy", "'lfu'"]),
        ({"capacity": 0}, ["capacity", "greater than 0", "0"]),
        ({"capacity": "big"}, ["capacity", "'big'"]),
        ({"capacity": 1.5}, ["capacity", "1.5"]),
        ({}, ["capacity", "required"]),
    ):
        fail(await st.http.post("/api/manager/config", json=bad), 400, *fragments)
        fail(await st.http.post("/api/manager/config", **form(bad)), 400, *fragments)


def memcache_for(address: str) -> Memcache:
    host, port = address.rsplit(":", 1)
    return Memcache((host, int(port)), connect_timeout=5, timeout=5)


async def test_cache_and_data_clear(st: Stack) -> None:
    node = (await st.pool(pool(st)))["nodes"][0]
    mc = memcache_for(node["address"])
    try:
        mc.set("k", b"v")
        assert mc.get("k") == b"v"
        doc = await op(st, await st.http.delete("/api/manager/cache/clear"))
        assert doc["Direction"] == "clear"
        assert mc.get("k") is None
        mc.set("k", b"v")
        await op(st, await st.http.delete("/api/manager/data/clear"))
        assert mc.get("k") is None
    finally:
        mc.close()
    # The request id makes a retry safe.
    headers = {"X-Request-ID": f"clear-{uuid.uuid4()}"}
    first = ok(await st.http.delete("/api/manager/cache/clear", headers=headers))
    again = ok(await st.http.delete("/api/manager/cache/clear", headers=headers))
    assert first == again
    await st.wait_status(first["ID"])


async def test_cache_list_keeps_the_given_nodes(st: Stack) -> None:
    name = pool(st)
    for _ in range(2):
        assert (await st.http.post(f"/v1/scale/out/{name}")).status_code == 201
    view = await st.wait_pool(name, 3)
    ids = ok(await st.http.get("/api/scaler/cache_list"))["cache_pool_ids"]
    assert sorted(ids) == sorted(n["id"] for n in view["nodes"])

    fail(
        await st.http.post("/api/scaler/cache_list", json={"cache_pool_ids": [ids[0], "nope"]}),
        400,
        "cache_pool_ids",
        "'nope'",
    )
    fail(
        await st.http.post("/api/scaler/cache_list", json={"cache_pool_ids": []}),
        400,
        "cache_pool_ids",
    )
    fail(await st.http.post("/api/scaler/cache_list", json={}), 400, "cache_pool_ids", "required")
    fail(
        await st.http.post("/api/scaler/cache_list", json={"cache_pool_ids": 7}),
        400,
        "cache_pool_ids",
    )

    same = ok(await st.http.post("/api/scaler/cache_list", json={"cache_pool_ids": ids}))
    assert same == {"ID": None, "removed": []}
    # A form sends one value per id.
    resp = await st.http.post("/api/scaler/cache_list", data={"cache_pool_ids": [ids[0], ids[1]]})
    content = ok(resp)
    assert content["removed"] == [ids[2]]
    await st.wait_status(content["ID"])
    await st.wait_pool(name, 2)
    resp = await st.http.post("/api/scaler/cache_list", json={"cache_pool_ids": [ids[1]]})
    assert ok(resp)["removed"] == [ids[0]]
    await st.wait_status(ok(resp)["ID"])
    view = await st.wait_pool(name, 1)
    assert [n["id"] for n in view["nodes"]] == [ids[1]]


async def test_poolsize_change_deletes_a_node(st: Stack) -> None:
    name = pool(st)
    assert (await st.http.post(f"/v1/scale/out/{name}")).status_code == 201
    view = await st.wait_pool(name, 2)
    gone, kept = view["nodes"]

    fail(
        await st.http.post("/api/poolsize/change", json={"cache_ip": "10.9.9.9"}),
        400,
        "cache_ip",
        "'10.9.9.9'",
    )
    fail(await st.http.post("/api/poolsize/change", json={}), 400, "cache_ip", "required")
    # Both nodes run on 127.0.0.1: a bare host is ambiguous.
    fail(
        await st.http.post("/api/poolsize/change", data={"cache_ip": "127.0.0.1"}),
        400,
        "matches 2 nodes",
    )
    resp = await st.http.post("/api/poolsize/change", data={"cache_ip": gone["address"]})
    assert ok(resp)["node"]["id"] == gone["id"]
    await st.wait_status(ok(resp)["ID"])
    view = await st.wait_pool(name, 1)
    assert [n["id"] for n in view["nodes"]] == [kept["id"]]
    fail(
        await st.http.post("/api/poolsize/change", json={"cache_ip": kept["address"]}),
        400,
        "reached to minimum",
    )


async def test_terminate_all_then_the_pool_tops_up(st: Stack) -> None:
    name = pool(st)
    before = (await st.pool(name))["nodes"][0]["id"]
    content = ok(await st.http.post("/api/scaler/terminate_all"))
    assert content["nodes"] == [before]
    doc = await st.wait_status(content["ID"])
    assert doc["Direction"] == "in"
    view = await st.wait_pool(name, 1)
    assert view["nodes"][0]["id"] != before


async def test_bad_bodies_and_paths(st: Stack) -> None:
    raw = {"content-type": "application/json"}
    fail(
        await st.http.post("/api/manager/poolsize/manual", content=b"{nope", headers=raw),
        400,
        "invalid JSON body",
    )
    fail(
        await st.http.post("/api/scaler/config", content=b"[1, 2]", headers=raw),
        400,
        "expected a JSON object",
    )
    fail(await st.http.get("/api/manager/nothing-here"), 404)
    fail(await st.http.get("/api/scaler/nothing-here"), 404)
    fail(await st.http.post("/api/poolsize/nothing-here"), 404)
    fail(await st.http.get("/api/manager/config"), 405)
    fail(await st.http.post("/api/manager/cache/clear"), 405)


async def test_missing_pool_is_404(bare: Stack) -> None:
    for method, path in (
        ("GET", "/api/manager/poolsize"),
        ("GET", "/api/manager/pool_node_list"),
        ("GET", "/api/manager/poolsize/config"),
        ("GET", "/api/manager/aggregate_stats"),
        ("GET", "/api/scaler/cache_list"),
        ("POST", "/api/scaler/list"),
        ("POST", "/api/scaler/terminate_all"),
        ("DELETE", "/api/manager/cache/clear"),
    ):
        fail(await bare.http.request(method, path), 404, "no pool named")
    fail(
        await bare.http.post("/api/manager/poolsize/manual", json={"change": "increase"}),
        404,
        "no pool named",
    )


ENDPOINTS = [
    ("GET", "/api/scaler/"),
    ("POST", "/api/scaler/config"),
    ("POST", "/api/scaler/terminate_all"),
    ("GET", "/api/scaler/list"),
    ("POST", "/api/scaler/list"),
    ("POST", "/api/scaler/set_test_miss_rate"),
    ("GET", "/api/scaler/cache_list"),
    ("POST", "/api/scaler/cache_list"),
    ("POST", "/api/poolsize/change"),
    ("GET", "/api/manager/pool_node_list"),
    ("GET", "/api/manager/poolsize/config"),
    ("GET", "/api/manager/poolsize"),
    ("GET", "/api/manager/aggregate_stats"),
    ("POST", "/api/manager/poolsize/manual"),
    ("POST", "/api/manager/poolsize/automatic"),
    ("POST", "/api/manager/config"),
    ("DELETE", "/api/manager/cache/clear"),
    ("DELETE", "/api/manager/data/clear"),
]
GARBAGE: list[tuple[bytes, str]] = [
    (b"\xff\xfe\x00garbage", "application/json"),
    (b'{"change": {"deep": [1, 2]}, "test_miss_rate": [], "cache_pool_ids": {"a": 1}}', ""),
    (b'{"capacity": 1e400, "expand_ratio": "NaN", "cache_ip": ""}', "application/json"),
    (b"change=&cache_pool_ids=&cache_ip=%00&capacity=-1", "application/x-www-form-urlencoded"),
    (b"--x\r\nbroken multipart", "multipart/form-data; boundary=x"),
    (b"<xml/>", "text/xml"),
]


@pytest.mark.parametrize(("payload", "ctype"), GARBAGE)
async def test_no_input_gives_a_server_error(st: Stack, payload: bytes, ctype: str) -> None:
    headers = {"content-type": ctype} if ctype else {}
    for method, path in ENDPOINTS:
        if path == "/api/scaler/terminate_all":
            continue  # takes no body, and would really terminate the pool
        resp = await st.http.request(method, path, content=payload, headers=headers)
        assert resp.status_code < 500, (method, path, resp.status_code, resp.text)
        if resp.headers["content-type"].startswith("application/json"):
            assert resp.json()["success"] in ("true", "false"), (path, resp.text)
