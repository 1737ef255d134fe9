"""Bad input on the chemtrail surface: the right 4xx, JSON with a clear message, never 5xx."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from tests.e2e.stack import Stack, stack, stack_settings


@pytest.fixture
async def st(dev_env: WorkflowEnvironment, tmp_path: Path) -> AsyncIterator[Stack]:
    settings = stack_settings(tmp_path, dev_env.client)
    async with stack(settings, dev_env.client) as s:
        yield s


def error(resp, status: int, *fragments: str) -> None:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"Error", "Code"} and body["Code"] == status
    for frag in fragments:
        assert frag in body["Error"], body["Error"]


BAD_POLICIES = [
    ({"MinCount": "many", "MaxCount": 2, "Provider": "local"}, "MinCount"),
    (
        {"MinCount": 5, "MaxCount": 2, "Provider": "local"},
        "MinCount (5) must not exceed MaxCount (2)",
    ),
    ({"MinCount": 1, "MaxCount": 2, "Provider": "gcp"}, "Provider"),
    ({"MinCount": 1, "MaxCount": 2, "Provider": "aws-autoscaling"}, "asg-name"),
    ({"MinCount": 1, "MaxCount": 2, "Provider": "local", "Colour": "red"}, "Colour"),
    ({"MinCount": -1, "MaxCount": 2, "Provider": "local"}, "MinCount"),
    ({"MaxCount": 2, "Provider": "local"}, "MinCount"),
    ({"MinCount": 1, "MaxCount": 2, "Provider": "local", "ScaleOutCount": 0}, "ScaleOutCount"),
    (
        {
            "MinCount": 1,
            "MaxCount": 2,
            "Provider": "local",
            "Checks": {
                "cpu": {
                    "Resource": "disk",
                    "ComparisonOperator": "greater-than",
                    "ComparisonPercentage": 80,
                    "Action": "scale-out",
                }
            },
        },
        "Resource",
    ),
    ([1, 2, 3], "body"),
]


@pytest.mark.parametrize(("body", "fragment"), BAD_POLICIES)
async def test_bad_policy_bodies_are_400(st: Stack, body: object, fragment: str) -> None:
    name = st.pool_name()
    error(await st.http.put(f"/v1/policy/{name}", json=body), 400, fragment)
    error(await st.http.get(f"/v1/policy/{name}"), 404, "no scaling policy")


async def test_policy_path_and_body_errors(st: Stack) -> None:
    name = st.pool_name()
    raw = await st.http.put(
        f"/v1/policy/{name}", content=b"{not json", headers={"content-type": "application/json"}
    )
    error(raw, 400, "invalid request")
    body = {"MinCount": 0, "MaxCount": 2, "Provider": "local", "Class": "other"}
    error(await st.http.put(f"/v1/policy/{name}", json=body), 400, "does not match")
    error(
        await st.http.put("/v1/policy/bad name!", json={**body, "Class": None}),
        400,
        "invalid class",
    )
    error(await st.http.delete(f"/v1/policy/{name}"), 404, "no class")
    error(await st.http.get("/v1/scale/status", params={"pool": "no way!"}), 400, "invalid class")


async def test_scaling_prechecks(st: Stack) -> None:
    name = st.pool_name()
    error(
        await st.http.post(f"/v1/scale/out/{name}"),
        422,
        f"no scaling policy found for class {name}",
    )
    error(await st.http.post("/v1/scale/in/has space"), 422, "no scaling policy")

    policy = {"MinCount": 0, "MaxCount": 1, "Provider": "local", "Enabled": False}
    assert (await st.put_policy(name, **policy)).status_code == 200
    error(await st.http.post(f"/v1/scale/out/{name}"), 422, "disabled")

    assert (await st.put_policy(name, **{**policy, "Enabled": True})).status_code == 200
    error(await st.http.post(f"/v1/scale/in/{name}"), 422, "has no nodes")
    op = (await st.http.post(f"/v1/scale/out/{name}")).json()["ID"]
    error(await st.http.post(f"/v1/scale/out/{name}"), 412, "would exceed MaxCount 1")
    await st.wait_status(op)
    await st.wait_pool(name, 1)

    moved = {"MinCount": 0, "MaxCount": 1, "Provider": "no-op"}
    error(await st.put_policy(name, **moved), 409, "scale it to 0")

    assert (await st.http.delete(f"/v1/policy/{name}")).status_code == 200
    error(await st.http.post(f"/v1/scale/in/{name}"), 422, "no scaling policy")
    error(await st.http.delete(f"/v1/policy/{name}"), 422, "no scaling policy")
    assert name not in (await st.http.get("/v1/policies")).json()


async def test_policy_round_trip_uses_the_originals_names(st: Stack) -> None:
    name = st.pool_name()
    body = {
        "Enabled": True,
        "Class": name,
        "MinCount": 0,
        "MaxCount": 3,
        "ScaleOutCount": 2,
        "ScaleInCount": 1,
        "Provider": "no-op",
        "ProviderConfig": {"note": "x"},
        "Checks": {
            "cpu-high": {
                "Enabled": True,
                "Resource": "cpu",
                "ComparisonOperator": "greater-than",
                "ComparisonPercentage": 80,
                "Action": "scale-out",
            }
        },
    }
    resp = await st.http.put(f"/v1/policy/{name}", json=body)
    assert resp.status_code == 200, resp.text
    got = (await st.http.get(f"/v1/policy/{name}")).json()
    for key, value in body.items():
        assert got[key] == value, key
    assert got["Engine"] == "nomad" and got["DrainDeadlineSeconds"] == 300
    assert (await st.http.get("/v1/policies")).json()[name]["MaxCount"] == 3
    health = await st.http.get("/v1/system/health")
    assert health.status_code == 200 and health.json()["Status"] == "ok"
    metrics = (await st.http.get("/v1/system/metrics")).json()
    assert {"Timestamp", "Gauges", "Counters"} <= set(metrics)
    assert any(g["Labels"].get("class") == name for g in metrics["Gauges"])


WEIRD = ["%00", "..", "a" * 300, "%F0%9F%92%A5", "x%2Fy", "-", "@"]


@pytest.mark.parametrize("segment", WEIRD)
async def test_no_input_gives_a_server_error(st: Stack, segment: str) -> None:
    calls = [
        ("POST", f"/v1/scale/out/{segment}", None),
        ("POST", f"/v1/scale/in/{segment}", None),
        ("GET", f"/v1/scale/status/{segment}", None),
        ("DELETE", f"/v1/scale/status/{segment}", None),
        ("GET", f"/v1/policy/{segment}", None),
        ("DELETE", f"/v1/policy/{segment}", None),
        ("PUT", f"/v1/policy/{segment}", {"MinCount": 0, "MaxCount": 1, "Provider": "no-op"}),
        ("GET", f"/v1/pools/{segment}", None),
        ("GET", "/v1/scale/status", None),
    ]
    for method, path, body in calls:
        resp = await st.http.request(method, path, json=body)
        assert resp.status_code < 500, (method, path, resp.status_code, resp.text)
        assert isinstance(resp.json(), dict | list)
