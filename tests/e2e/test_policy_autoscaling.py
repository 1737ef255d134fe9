"""A chemtrail policy's own autoscaler, through HTTP (issue #12): checks over the Nomad
double's allocations scale an aws-autoscaling pool on moto's server out and in; a dry run
decides without queueing; bad checks are refused before anything is created."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment

from tests.doubles.nomad_asg import (
    clients_follow_group,
    desired_capacity,
    group_instances,
    node_of,
    set_cpu_allocated,
)
from tests.doubles.nomad_double import NomadApiDouble, start_nomad_double
from tests.e2e.stack import Stack, stack, stack_settings

CLASS = "batch"
CPU = 4000  # MHz per Nomad node: 3400 allocated on one node reads 85.0%
OUT_85 = "check cpu-high: cpu 85.0% > 80% -> scale-out by 1"
CHECKS = {
    "cpu-high": {
        "Resource": "cpu",
        "ComparisonOperator": "greater-than",
        "ComparisonPercentage": 80,
        "Action": "scale-out",
    },
    "cpu-low": {
        "Resource": "cpu",
        "ComparisonOperator": "less-than",
        "ComparisonPercentage": 20,
        "Action": "scale-in",
    },
}
# The shortest interval a policy takes, so that a round follows a change within ~1 s.
AUTO = {
    "Enabled": True,
    "IntervalSeconds": 1,
    "Strategy": "threshold",
    "Source": "nomad",
    "ScaleOutCooldownSeconds": 1,
    "ScaleInCooldownSeconds": 1,
}


@pytest.fixture
def nomad() -> Iterator[tuple[NomadApiDouble, str]]:
    double, url = start_nomad_double()
    try:
        yield double, url
    finally:
        double.stop()


def policy(asg: str, **auto: Any) -> dict[str, Any]:
    return {
        "MinCount": 1,
        "MaxCount": 3,
        "Provider": "aws-autoscaling",
        "ProviderConfig": {"asg-name": asg},
        "NodeClass": CLASS,
        "Checks": CHECKS,
        "AutoScaling": {**AUTO, **auto},
    }


async def decisions(st: Stack, name: str) -> list[dict[str, Any]]:
    resp = await st.http.get(f"/v1/pools/{name}/decisions")
    assert resp.status_code == 200, resp.text
    return resp.json()


async def wait_decisions(
    st: Stack,
    name: str,
    done: Callable[[list[dict[str, Any]]], bool],
    timeout_s: float = 60,
) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = await decisions(st, name)
        if done(found):
            return found
        await asyncio.sleep(0.2)
    raise AssertionError(f"the decisions never got there: {found}")


def reads(double: NomadApiDouble, node_id: str) -> int:
    """Times the node's allocations were read (only the autoscaler reads them here)."""
    path = f"/v1/node/{node_id}/allocations"
    return sum(1 for method, p in list(double.requests) if (method, p) == ("GET", path))


def acted(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in found if d["acted"]]


async def test_checks_over_nomad_scale_the_group_out_then_in(
    dev_env: WorkflowEnvironment,
    tmp_path: Path,
    nomad: tuple[NomadApiDouble, str],
    moto_url: str,
    make_asg: Callable[..., str],
    autoscaling: Any,
) -> None:
    double, nomad_url = nomad
    asg = make_asg(desired=1, min_size=0, max_size=4)
    (first_i,) = group_instances(autoscaling, asg)
    first = double.add_node(CLASS, first_i, cpu_shares=CPU)
    set_cpu_allocated(double, first, 2000)  # 50%: no check fires
    settings = stack_settings(
        tmp_path,
        dev_env.client,
        aws_endpoint_url=moto_url,
        nomad_address=nomad_url,
        nomad_poll_interval_s=0.05,
    )
    async with (
        stack(settings, dev_env.client) as st,
        # A client that joins late keeps the scale-out running over a few rounds.
        clients_follow_group(double, autoscaling, asg, CLASS, join_delay_s=3.0),
    ):
        name = st.pool_name()
        resp = await st.http.put(f"/v1/policy/{name}", json=policy(asg))
        assert resp.status_code == 200, resp.text
        await st.wait_pool(name, 1)
        await wait_decisions(st, name, lambda f: any("no check fired" in d["result"] for d in f))

        set_cpu_allocated(double, first, 3400)  # 85% of one node
        found = await wait_decisions(st, name, lambda f: len(acted(f)) == 1)
        out = acted(found)[0]
        out_doc = await st.wait_status(out["operation"])
        await st.wait_pool(name, 2)
        assert desired_capacity(autoscaling, asg) == 2

        # 3400 of 8000 MHz now: 42.5%; the jobs shrink to 400 MHz, 5%.
        set_cpu_allocated(double, first, 400)
        found = await wait_decisions(st, name, lambda f: len(acted(f)) == 2)
        into = acted(found)[1]
        in_doc = await st.wait_status(into["operation"])
        await st.wait_pool(name, 1)
        assert desired_capacity(autoscaling, asg) == 1
        (kept,) = group_instances(autoscaling, asg)
        # At the minimum the next low reading is held, not queued.
        found = await wait_decisions(
            st, name, lambda f: "held at 1: min 1" in f[-1]["result"], timeout_s=30
        )
        assert node_of(double, kept) is not None

    out_msg = OUT_85
    assert out["rule"] == "threshold/checks" and out["source"] == "nomad"
    assert out["reading"].startswith("cpu 85.0%") and out["result"] == out_msg
    assert (out["direction"], out["count"], out["new_count"]) == ("scale-out", 1, 2)
    assert not out["dry_run"]
    in_msg = "check cpu-low: cpu 5.0% < 20% -> scale-in by 1"
    assert into["result"] == in_msg and into["reading"].startswith("cpu 5.0%")
    assert (into["direction"], into["count"], into["new_count"]) == ("scale-in", 2, 1)

    for doc, direction, message in ((out_doc, "out", out_msg), (in_doc, "in", in_msg)):
        assert doc["Status"] == "success" and doc["Direction"] == direction
        assert doc["Provider"] == "aws-autoscaling" and doc["ProviderCfg"] == {"asg-name": asg}
        first_two = [(e["Source"], e["Message"]) for e in doc["Events"][:2]]
        assert first_two == [
            ("chemtrail", "scaling activity has started"),
            ("autoscaler", f"{message} (read from nomad)"),
        ], doc["Events"]
    # Rounds while the scale-out ran (still 85%: the new client had not joined) were
    # skipped, not queued again; the rest found nothing to do or were held.
    during = found[found.index(out) + 1 : found.index(into)]
    assert any(d["result"] == "a resize is still running: skipped" for d in during), during
    assert all(d["operation"] is None and not d["dry_run"] for d in found if not d["acted"])
    assert [d["operation"] for d in acted(found)] == [out["operation"], into["operation"]]


async def test_dry_run_records_every_round_and_queues_nothing(
    dev_env: WorkflowEnvironment,
    tmp_path: Path,
    nomad: tuple[NomadApiDouble, str],
    moto_url: str,
    make_asg: Callable[..., str],
    autoscaling: Any,
) -> None:
    double, nomad_url = nomad
    asg = make_asg(desired=1, min_size=0, max_size=4)
    (instance,) = group_instances(autoscaling, asg)
    node = double.add_node(CLASS, instance, cpu_shares=CPU)
    set_cpu_allocated(double, node, 3400)  # 85% from the first round on
    settings = stack_settings(
        tmp_path, dev_env.client, aws_endpoint_url=moto_url, nomad_address=nomad_url
    )
    async with stack(settings, dev_env.client) as st:
        name = st.pool_name()
        body = policy(asg, DryRun=True, ScaleOutCooldownSeconds=0)
        resp = await st.http.put(f"/v1/policy/{name}", json=body)
        assert resp.status_code == 200, resp.text
        assert resp.json()["AutoScaling"]["DryRun"] is True
        await st.wait_pool(name, 1)
        found = await wait_decisions(st, name, lambda f: len(f) >= 3)
        # Each round reads the one node's allocations once: the reads bracket the records.
        reads_before = reads(double, node)
        found = await decisions(st, name)
        reads_after = reads(double, node)
        listing = (await st.http.get("/v1/scale/status", params={"pool": name})).json()
        view = await st.pool(name)

    assert listing == {}, listing
    assert len(view["nodes"]) == 1 and not view["queue"] and view["running"] is None
    assert desired_capacity(autoscaling, asg) == 1
    for d in found:
        assert d["dry_run"] and not d["acted"] and d["operation"] is None, d
        assert d["rule"] == "threshold/checks" and d["source"] == "nomad"
        assert d["direction"] == "scale-out"
        # The count never changes, so every round asks for the same resize.
        assert (d["count"], d["new_count"]) == (1, 2), d
        assert d["result"] == f"{OUT_85}; dry run: not queued"
    # One record a round, none lost (the last read may still be on its way).
    assert reads_before - 1 <= len(found) <= reads_after, (reads_before, len(found), reads_after)
    stamps = [d["at"] for d in found]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)


BAD = [
    (
        "Checks.cpu-high.Resource",
        {"Checks": {"cpu-high": {**CHECKS["cpu-high"], "Resource": "disk"}}},
    ),
    (
        "Checks.cpu-high.ComparisonOperator",
        {"Checks": {"cpu-high": {**CHECKS["cpu-high"], "ComparisonOperator": "equal-to"}}},
    ),
    (
        "Checks.cpu-high.ComparisonPercentage",
        {"Checks": {"cpu-high": {**CHECKS["cpu-high"], "ComparisonPercentage": 150}}},
    ),
    (
        "AutoScaling.Target",
        {"AutoScaling": {**AUTO, "Strategy": "target-value", "Metric": "cpu"}},
    ),
]


async def test_bad_checks_are_refused_in_chemtrails_format(
    dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    # No worker: a refused policy must not even reach a pool workflow.
    settings = stack_settings(tmp_path, dev_env.client)
    async with stack(settings, dev_env.client, worker=False) as st:
        name = st.pool_name()
        for field, change in BAD:
            resp = await st.http.put(f"/v1/policy/{name}", json={**policy("asg-x"), **change})
            assert resp.status_code == 400, (field, resp.text)
            body = resp.json()
            assert set(body) == {"Error", "Code"} and body["Code"] == 400, body
            assert field in body["Error"], (field, body["Error"])
        assert (await st.http.get(f"/v1/policy/{name}")).status_code == 404
        assert (await st.http.get(f"/v1/pools/{name}")).status_code == 404
        assert name not in [p["name"] for p in (await st.http.get("/v1/pools")).json()]
