"""A Nomad client class on an AWS Auto Scaling group, for tests against the Nomad double
and moto: instances join the class as they boot and go down once they leave the group,
and the test sets how much CPU the class's jobs hold on a node."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from tests.doubles.nomad_double import INSTANCE_ID_ATTR, LIVE, NomadApiDouble


def group_instances(autoscaling: Any, asg: str) -> list[str]:
    desc = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[asg])
    return [i["InstanceId"] for i in desc["AutoScalingGroups"][0]["Instances"]]


def desired_capacity(autoscaling: Any, asg: str) -> int:
    desc = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[asg])
    return int(desc["AutoScalingGroups"][0]["DesiredCapacity"])


def node_of(double: NomadApiDouble, instance_id: str) -> str | None:
    """The Nomad node id of an instance's client, if it has joined."""
    for node in list(double.nodes.values()):
        if node.attributes.get(INSTANCE_ID_ATTR) == instance_id:
            return node.id
    return None


async def _follow(
    double: NomadApiDouble,
    autoscaling: Any,
    asg: str,
    node_class: str,
    join_delay_s: float,
    stop: asyncio.Event,
) -> None:
    known = {n.attributes.get(INSTANCE_ID_ATTR) for n in double.nodes.values()}
    while not stop.is_set():
        current = set(await asyncio.to_thread(group_instances, autoscaling, asg))
        for instance in current - known:
            known.add(instance)
            # A booting instance's client registers a little after the instance exists.
            double.register_later(join_delay_s, node_class, instance)
        for node in list(double.nodes.values()):
            gone = node.attributes.get(INSTANCE_ID_ATTR) not in current
            if gone and node.status == "ready":
                # A terminated instance's client stops heartbeating: Nomad marks it down.
                double.set_node(node.id, status="down")
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def clients_follow_group(
    double: NomadApiDouble,
    autoscaling: Any,
    asg: str,
    node_class: str,
    join_delay_s: float = 0.3,
) -> AsyncIterator[None]:
    """While inside, the group's instances join ``node_class`` and leave it."""
    stop = asyncio.Event()
    task = asyncio.create_task(_follow(double, autoscaling, asg, node_class, join_delay_s, stop))
    try:
        yield
    finally:
        stop.set()
        await task


def set_cpu_allocated(double: NomadApiDouble, node_id: str, cpu_shares: int) -> None:
    """The node's jobs now hold ``cpu_shares`` MHz: its live allocations stop and, unless
    the figure is 0, one allocation of that size takes their place."""
    # The double's lock: the HTTP thread reads allocations while the test changes them.
    with double._lock:
        for alloc in double.allocs.values():
            if alloc.node_id == node_id and alloc.client_status in LIVE:
                alloc.client_status, alloc.desired_status = "complete", "stop"
                alloc.modify_index = double._bump()
    if cpu_shares:
        double.add_alloc(node_id, cpu_shares=cpu_shares)
