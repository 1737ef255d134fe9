"""The seed's own scenario through HTTP: a Nomad client class on an AWS Auto Scaling
group (moto's server), drained through Nomad's API (the test double)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment

from tests.doubles.nomad_double import NomadApiDouble, start_nomad_double
from tests.e2e.stack import stack, stack_settings

CLASS = "high-memory"


@pytest.fixture
def nomad() -> Iterator[tuple[NomadApiDouble, str]]:
    double, url = start_nomad_double()
    try:
        yield double, url
    finally:
        double.stop()


def group_instances(autoscaling: Any, asg: str) -> list[str]:
    desc = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[asg])
    return [i["InstanceId"] for i in desc["AutoScalingGroups"][0]["Instances"]]


async def register_new_instances(
    double: NomadApiDouble, autoscaling: Any, asg: str, stop: asyncio.Event
) -> None:
    """What a booting instance's Nomad client does: join the cluster, in its class."""
    known = {n.attributes.get("unique.platform.aws.instance-id") for n in double.nodes.values()}
    while not stop.is_set():
        for instance in await asyncio.to_thread(group_instances, autoscaling, asg):
            if instance not in known:
                known.add(instance)
                double.register_later(0.3, CLASS, instance)
        await asyncio.sleep(0.1)


async def test_scale_in_drains_through_nomad_then_detaches_and_terminates(
    dev_env: WorkflowEnvironment,
    tmp_path: Path,
    nomad: tuple[NomadApiDouble, str],
    moto_url: str,
    make_asg: Callable[..., str],
    autoscaling: Any,
    ec2: Any,
) -> None:
    double, nomad_url = nomad
    asg = make_asg(desired=2, min_size=0, max_size=4)
    busy_i, idle_i = group_instances(autoscaling, asg)
    busy = double.add_node(CLASS, busy_i)
    idle = double.add_node(CLASS, idle_i)
    for _ in range(3):
        double.add_alloc(busy, cpu_shares=1000)
    double.add_alloc(idle, cpu_shares=200, memory_mb=7000)  # busy by memory, idle by CPU
    double.add_alloc(idle, cpu_shares=100)

    settings = stack_settings(
        tmp_path,
        dev_env.client,
        aws_endpoint_url=moto_url,
        nomad_address=nomad_url,
        nomad_poll_interval_s=0.05,
    )
    async with stack(settings, dev_env.client) as st:
        name = st.pool_name()
        policy = {
            "MinCount": 1,
            "MaxCount": 3,
            "Provider": "aws-autoscaling",
            "ProviderConfig": {"asg-name": asg},
            "NodeClass": CLASS,
        }
        resp = await st.http.put(f"/v1/policy/{name}", json=policy)
        assert resp.status_code == 200, resp.text
        await st.wait_pool(name, 2)

        op = (await st.http.post(f"/v1/scale/in/{name}")).json()["ID"]
        doc = await st.wait_status(op)
        messages = [(e["Source"], e["Message"]) for e in doc["Events"]]
        expected = [
            ("chemtrail", "scaling activity has started"),
            ("nomad", f'all allocations on node "{idle}" have stopped'),
            ("nomad", f"drain complete for node {idle}"),
            ("aws-autoscaling", f"successfully terminated AWS EC2 instance {idle_i}"),
            ("chemtrail", "scaling activity has successfully completed"),
        ]
        positions = [messages.index(m) for m in expected]
        assert positions == sorted(positions), messages
        assert doc["Direction"] == "in" and doc["Status"] == "success"
        assert doc["Provider"] == "aws-autoscaling"
        assert doc["ProviderCfg"] == {"asg-name": asg}

        assert double.drain_posts_for(idle) == 1 and double.drain_posts_for(busy) == 0
        assert group_instances(autoscaling, asg) == [busy_i]
        state = ec2.describe_instances(InstanceIds=[idle_i])["Reservations"][0]["Instances"][0]
        assert state["State"]["Name"] in ("shutting-down", "terminated")
        view = await st.wait_pool(name, 1)
        assert [n["provider_ref"] for n in view["nodes"]] == [busy_i]

        stop = asyncio.Event()
        joiner = asyncio.create_task(register_new_instances(double, autoscaling, asg, stop))
        try:
            op = (await st.http.post(f"/v1/scale/out/{name}")).json()["ID"]
            doc = await st.wait_status(op)
        finally:
            stop.set()
            with contextlib.suppress(asyncio.CancelledError):
                await joiner
        sources = {(e["Source"], e["Message"]) for e in doc["Events"]}
        assert ("aws-autoscaling", "successfully described AWS AutoScaling group") in sources
        assert ("aws-autoscaling", "successfully updated count of AWS AutoScaling group") in sources
        assert any(s == "nomad" and "is ready" in m for s, m in sources)
        desc = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[asg])
        assert desc["AutoScalingGroups"][0]["DesiredCapacity"] == 2
        await st.wait_pool(name, 2)
