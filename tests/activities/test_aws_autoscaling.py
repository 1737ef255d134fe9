"""The aws-autoscaling provider against moto's server (no Temporal needed)."""

from __future__ import annotations

import socket
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from botocore.stub import Stubber
from temporalio.exceptions import ApplicationError

from scaleflow.activities.providers import aws_autoscaling as mod
from scaleflow.activities.providers.aws_autoscaling import AwsAutoScalingProvider
from scaleflow.core.activity_io import (
    ListNodesInput,
    ProvisionInput,
    TerminateInput,
)
from scaleflow.core.models import (
    EventNote,
    Node,
    NodeState,
    PoolConfig,
    ProviderName,
)
from scaleflow.core.settings import Settings

SOURCE = "aws-autoscaling"


class WorkerCrash(Exception):
    """Stands in for a worker dying in the middle of an activity."""


# ---- helpers ----------------------------------------------------------------


def config(group: str | None) -> PoolConfig:
    cfg = {"asg-name": group} if group is not None else {}
    return PoolConfig(
        name="cache", provider=ProviderName.AWS_AUTOSCALING, provider_config=cfg, max_count=10
    )


def provider(settings: Settings) -> AwsAutoScalingProvider:
    return AwsAutoScalingProvider(settings, launch_wait_s=1.0, poll_interval_s=0.05)


def group_of(autoscaling: Any, name: str) -> dict[str, Any]:
    return autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[name])[
        "AutoScalingGroups"
    ][0]


def member_ids(autoscaling: Any, name: str) -> list[str]:
    return sorted(i["InstanceId"] for i in group_of(autoscaling, name)["Instances"])


def instance(ec2: Any, iid: str) -> dict[str, Any]:
    return ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]


def tags(resource: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags") or []}


def messages(events: list[EventNote]) -> list[str]:
    return [e.message for e in events]


def provision(prov: AwsAutoScalingProvider, group: str, node_id: str, known: list[str]) -> Any:
    return prov.provision(
        ProvisionInput(pool="cache", node_id=node_id, config=config(group), known_refs=known)
    )


def terminate(prov: AwsAutoScalingProvider, group: str, node: Node) -> Any:
    return prov.terminate(TerminateInput(pool="cache", node=node, config=config(group)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- provision --------------------------------------------------------------


def test_provision_raises_desired_capacity_by_exactly_one(
    aws_settings: Settings, autoscaling: Any, ec2: Any, make_asg: Callable[..., str]
) -> None:
    group = make_asg(desired=1)
    before = member_ids(autoscaling, group)

    res = provision(provider(aws_settings), group, "n1", before)

    asg = group_of(autoscaling, group)
    assert asg["DesiredCapacity"] == 2
    after = member_ids(autoscaling, group)
    assert len(after) == 2
    node = res.node
    assert node.id == "n1"
    assert node.provider_ref in after
    assert node.provider_ref not in before
    assert node.state is NodeState.PROVISIONING
    inst = instance(ec2, node.provider_ref)
    assert node.address == inst["PrivateIpAddress"]
    assert node.created_at == inst["LaunchTime"]
    assert tags(inst)["scaleflow:node-id"] == "n1"
    assert tags(inst)["scaleflow:pool"] == "cache"
    # The provision marker is gone once the instance carries the node's tag.
    assert not [k for k in tags(asg) if k.startswith("scaleflow:provision:")]

    msgs = messages(res.events)
    assert msgs[:2] == [
        "successfully described AWS AutoScaling group",
        "successfully updated count of AWS AutoScaling group",
    ]
    assert f"claimed AWS EC2 instance {node.provider_ref} for node n1" in msgs
    assert {e.source for e in res.events} == {SOURCE}
    assert all(e.at_ns for e in res.events)


def test_provision_twice_with_same_node_id_raises_capacity_once(
    aws_settings: Settings, autoscaling: Any, make_asg: Callable[..., str]
) -> None:
    group = make_asg(desired=1)
    known = member_ids(autoscaling, group)
    prov = provider(aws_settings)

    first = provision(prov, group, "n1", known)
    # A retry carries the same input, so the same (stale) known refs.
    second = provision(prov, group, "n1", known)

    assert group_of(autoscaling, group)["DesiredCapacity"] == 2
    assert len(member_ids(autoscaling, group)) == 2
    assert second.node.provider_ref == first.node.provider_ref
    assert second.node.id == "n1"
    assert messages(second.events) == [
        f"found AWS EC2 instance {first.node.provider_ref} of node n1"
    ]
    assert second.events[0].source == SOURCE


def test_provision_retry_after_crash_before_claim_raises_capacity_once(
    aws_settings: Settings,
    autoscaling: Any,
    ec2: Any,
    make_asg: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    group = make_asg(desired=1)
    known = member_ids(autoscaling, group)
    prov = provider(aws_settings)

    # The worker dies after raising the capacity but before tagging the new instance.
    def crash(*_: Any) -> None:
        raise WorkerCrash

    monkeypatch.setattr(prov, "_claim", crash)
    with pytest.raises(WorkerCrash):
        provision(prov, group, "n1", known)
    asg = group_of(autoscaling, group)
    assert asg["DesiredCapacity"] == 2
    assert "scaleflow:provision:n1" in tags(asg)

    # The retry runs on a fresh worker: a new provider without the crash.
    res = provision(provider(aws_settings), group, "n1", known)

    asg = group_of(autoscaling, group)
    assert asg["DesiredCapacity"] == 2
    assert "scaleflow:provision:n1" not in tags(asg)
    new = set(member_ids(autoscaling, group)) - set(known)
    assert {res.node.provider_ref} == new
    assert tags(instance(ec2, res.node.provider_ref))["scaleflow:node-id"] == "n1"
    # The retry described the group but did not update its count again.
    assert "successfully updated count of AWS AutoScaling group" not in messages(res.events)


def test_provision_retry_after_crash_between_marker_and_raise(
    aws_settings: Settings,
    autoscaling: Any,
    make_asg: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    group = make_asg(desired=1)
    known = member_ids(autoscaling, group)
    prov = provider(aws_settings)

    # The worker dies after writing the marker but before SetDesiredCapacity.
    real_put = prov._put_marker

    def put_then_crash(*args: Any) -> None:
        real_put(*args)
        raise WorkerCrash

    monkeypatch.setattr(prov, "_put_marker", put_then_crash)
    with pytest.raises(WorkerCrash):
        provision(prov, group, "n1", known)
    asg = group_of(autoscaling, group)
    assert asg["DesiredCapacity"] == 1
    assert "scaleflow:provision:n1" in tags(asg)

    res = provision(provider(aws_settings), group, "n1", known)

    # The retry saw a settled group with nothing for n1 and made the one raise.
    assert group_of(autoscaling, group)["DesiredCapacity"] == 2
    assert res.node.provider_ref not in known
    assert res.node.provider_ref in member_ids(autoscaling, group)
    assert "successfully updated count of AWS AutoScaling group" in messages(res.events)


def test_provision_skips_instances_of_other_nodes(
    aws_settings: Settings, autoscaling: Any, make_asg: Callable[..., str]
) -> None:
    group = make_asg(desired=1)
    known = member_ids(autoscaling, group)
    prov = provider(aws_settings)

    a = provision(prov, group, "n1", known)
    # known_refs deliberately lacks n1's instance: its tag alone keeps it off limits.
    b = provision(prov, group, "n2", known)

    assert group_of(autoscaling, group)["DesiredCapacity"] == 3
    assert a.node.provider_ref != b.node.provider_ref
    assert {a.node.provider_ref, b.node.provider_ref} == set(member_ids(autoscaling, group)) - set(
        known
    )


def test_provision_at_max_size_is_fatal_and_leaves_no_marker(
    aws_settings: Settings, autoscaling: Any, make_asg: Callable[..., str]
) -> None:
    group = make_asg(desired=2, max_size=2)

    with pytest.raises(ApplicationError) as err:
        provision(provider(aws_settings), group, "n1", member_ids(autoscaling, group))

    assert err.value.non_retryable
    assert err.value.message.startswith("failed to update count of AWS AutoScaling group")
    assert err.value.details == ({"source": SOURCE},)
    asg = group_of(autoscaling, group)
    assert asg["DesiredCapacity"] == 2
    assert not [k for k in tags(asg) if k.startswith("scaleflow:provision:")]


def test_provision_unknown_group_is_fatal(aws_settings: Settings) -> None:
    with pytest.raises(ApplicationError) as err:
        provision(provider(aws_settings), "no-such-group", "n1", [])

    assert err.value.non_retryable
    assert err.value.message.startswith("failed to describe AWS AutoScaling group")
    assert err.value.details == ({"source": SOURCE},)


def test_provision_collects_stale_markers(
    aws_settings: Settings, autoscaling: Any, make_asg: Callable[..., str]
) -> None:
    group = make_asg(desired=1)
    # A marker left by a provision that gave up long ago.
    autoscaling.create_or_update_tags(
        Tags=[
            {
                "ResourceId": group,
                "ResourceType": "auto-scaling-group",
                "Key": "scaleflow:provision:old",
                "Value": "2@1000",
                "PropagateAtLaunch": False,
            }
        ]
    )

    provision(provider(aws_settings), group, "n1", member_ids(autoscaling, group))

    assert "scaleflow:provision:old" not in tags(group_of(autoscaling, group))


# ---- terminate --------------------------------------------------------------


def test_terminate_detaches_with_decrement_and_terminates(
    aws_settings: Settings, autoscaling: Any, ec2: Any, make_asg: Callable[..., str]
) -> None:
    group = make_asg(desired=2)
    iid = member_ids(autoscaling, group)[0]
    node = Node(id=iid, provider_ref=iid, created_at=datetime.now(UTC))

    res = terminate(provider(aws_settings), group, node)

    assert group_of(autoscaling, group)["DesiredCapacity"] == 1
    assert iid not in member_ids(autoscaling, group)
    assert instance(ec2, iid)["State"]["Name"] in {"shutting-down", "terminated"}
    assert messages(res.events) == [
        f"successfully detached instance {iid} from AWS AutoScaling group",
        f"successfully terminated AWS EC2 instance {iid}",
    ]
    assert {e.source for e in res.events} == {SOURCE}


def test_terminate_twice_succeeds_and_decrements_once(
    aws_settings: Settings, autoscaling: Any, ec2: Any, make_asg: Callable[..., str]
) -> None:
    group = make_asg(desired=3)
    iid = member_ids(autoscaling, group)[0]
    node = Node(id="n1", provider_ref=iid, created_at=datetime.now(UTC))
    prov = provider(aws_settings)

    terminate(prov, group, node)
    again = terminate(prov, group, node)

    assert group_of(autoscaling, group)["DesiredCapacity"] == 2
    assert len(member_ids(autoscaling, group)) == 2
    assert instance(ec2, iid)["State"]["Name"] in {"shutting-down", "terminated"}
    # Already detached: only the (harmless) termination is repeated.
    assert messages(again.events) == [f"successfully terminated AWS EC2 instance {iid}"]


def test_terminate_after_crash_between_detach_and_terminate(
    aws_settings: Settings, autoscaling: Any, ec2: Any, make_asg: Callable[..., str]
) -> None:
    group = make_asg(desired=2)
    iid = member_ids(autoscaling, group)[0]
    # The earlier attempt detached the instance and died before terminating it.
    autoscaling.detach_instances(
        InstanceIds=[iid], AutoScalingGroupName=group, ShouldDecrementDesiredCapacity=True
    )

    res = terminate(
        provider(aws_settings), group, Node(id="n1", provider_ref=iid, created_at=datetime.now(UTC))
    )

    assert group_of(autoscaling, group)["DesiredCapacity"] == 1
    assert instance(ec2, iid)["State"]["Name"] in {"shutting-down", "terminated"}
    assert messages(res.events) == [f"successfully terminated AWS EC2 instance {iid}"]


def test_terminate_of_unknown_instance_succeeds(
    aws_settings: Settings, autoscaling: Any, make_asg: Callable[..., str]
) -> None:
    group = make_asg(desired=1)
    gone = "i-0123456789abcdef0"

    res = terminate(
        provider(aws_settings),
        group,
        Node(id="n1", provider_ref=gone, created_at=datetime.now(UTC)),
    )

    assert group_of(autoscaling, group)["DesiredCapacity"] == 1
    assert messages(res.events) == [f"AWS EC2 instance {gone} was already gone"]
    assert res.events[0].source == SOURCE


def test_terminate_falls_back_to_the_nomad_instance_attribute(
    aws_settings: Settings, autoscaling: Any, ec2: Any, make_asg: Callable[..., str]
) -> None:
    group = make_asg(desired=1)
    iid = member_ids(autoscaling, group)[0]
    node = Node(
        id="nomad-node",
        attributes={"unique.platform.aws.instance-id": iid},
        created_at=datetime.now(UTC),
    )

    terminate(provider(aws_settings), group, node)

    assert group_of(autoscaling, group)["DesiredCapacity"] == 0
    assert instance(ec2, iid)["State"]["Name"] in {"shutting-down", "terminated"}


def test_compensating_terminate_finds_the_instance_by_its_node_tag(
    aws_settings: Settings,
    autoscaling: Any,
    ec2: Any,
    make_asg: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    group = make_asg(desired=1)
    known = member_ids(autoscaling, group)
    prov = provider(aws_settings)
    # The provision tagged its instance but died before returning it.
    real_drop = prov._drop_markers

    def drop_then_crash(group: str, keys: list[str]) -> None:
        real_drop(group, keys)
        if "scaleflow:provision:n1" in keys:
            raise WorkerCrash

    monkeypatch.setattr(prov, "_drop_markers", drop_then_crash)
    with pytest.raises(WorkerCrash):
        provision(prov, group, "n1", known)
    (iid,) = set(member_ids(autoscaling, group)) - set(known)

    # The workflow knows the node by id only.
    node = Node(
        id="n1", provider_ref="", state=NodeState.PROVISIONING, created_at=datetime.now(UTC)
    )
    res = terminate(provider(aws_settings), group, node)

    assert group_of(autoscaling, group)["DesiredCapacity"] == 1
    assert member_ids(autoscaling, group) == known
    assert instance(ec2, iid)["State"]["Name"] in {"shutting-down", "terminated"}
    assert messages(res.events)[-1] == f"successfully terminated AWS EC2 instance {iid}"


def test_compensating_terminate_without_an_instance_succeeds(
    aws_settings: Settings,
    autoscaling: Any,
    make_asg: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    group = make_asg(desired=1)
    prov = provider(aws_settings)

    def crash(*_: Any) -> None:
        raise WorkerCrash

    monkeypatch.setattr(prov, "_claim", crash)
    with pytest.raises(WorkerCrash):
        provision(prov, group, "n1", member_ids(autoscaling, group))
    node = Node(
        id="n1", provider_ref="", state=NodeState.PROVISIONING, created_at=datetime.now(UTC)
    )

    res = terminate(provider(aws_settings), group, node)

    assert messages(res.events) == ["no AWS EC2 instance was made for node n1"]
    assert res.events[0].source == SOURCE
    # The marker goes; the unclaimed instance stays for list_nodes to show.
    asg = group_of(autoscaling, group)
    assert "scaleflow:provision:n1" not in tags(asg)
    assert asg["DesiredCapacity"] == 2


def test_terminate_refuses_an_instance_of_another_group(
    aws_settings: Settings, autoscaling: Any, ec2: Any, make_asg: Callable[..., str]
) -> None:
    mine, other = make_asg(desired=1), make_asg(desired=1)
    iid = member_ids(autoscaling, other)[0]

    with pytest.raises(ApplicationError) as err:
        terminate(
            provider(aws_settings),
            mine,
            Node(id="n1", provider_ref=iid, created_at=datetime.now(UTC)),
        )

    assert err.value.non_retryable
    assert err.value.message.startswith(f"failed to detach instance {iid}")
    assert instance(ec2, iid)["State"]["Name"] == "running"
    assert group_of(autoscaling, other)["DesiredCapacity"] == 1


# ---- configuration and error mapping -------------------------------------------


@pytest.mark.parametrize("call", ["provision", "terminate", "list_nodes"])
def test_missing_asg_name_is_non_retryable(aws_settings: Settings, call: str) -> None:
    prov = provider(aws_settings)
    cfg = config(None)
    node = Node(id="n1", provider_ref="i-0123456789abcdef0", created_at=datetime.now(UTC))
    calls: dict[str, Callable[[], Any]] = {
        "provision": lambda: prov.provision(ProvisionInput(pool="cache", node_id="n1", config=cfg)),
        "terminate": lambda: prov.terminate(TerminateInput(pool="cache", node=node, config=cfg)),
        "list_nodes": lambda: prov.list_nodes(ListNodesInput(pool="cache", config=cfg)),
    }

    with pytest.raises(ApplicationError) as err:
        calls[call]()

    assert err.value.non_retryable
    assert "asg-name" in err.value.message
    assert err.value.details == ({"source": SOURCE},)


@pytest.mark.parametrize(
    ("code", "status", "non_retryable"),
    [
        ("Throttling", 400, False),
        ("ServiceUnavailable", 503, False),
        ("InternalFailure", 500, False),
        ("ValidationError", 400, True),
    ],
)
def test_aws_errors_map_to_retryable_or_fatal(
    aws_settings: Settings, code: str, status: int, non_retryable: bool
) -> None:
    prov = provider(aws_settings)
    with Stubber(prov.autoscaling) as stub:
        stub.add_client_error(
            "describe_auto_scaling_groups", service_error_code=code, http_status_code=status
        )
        with pytest.raises(ApplicationError) as err:
            prov.list_nodes(ListNodesInput(pool="cache", config=config("g")))

    assert err.value.non_retryable is non_retryable
    assert err.value.message.startswith("failed to describe AWS AutoScaling group")
    assert err.value.details == ({"source": SOURCE},)


def test_unreachable_endpoint_is_retryable(
    aws_credentials: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One attempt inside botocore keeps the test quick; Temporal does the retrying.
    monkeypatch.setattr(
        mod, "BOTO_CONFIG", mod.BOTO_CONFIG.merge(mod.Config(retries={"max_attempts": 1}))
    )
    settings = Settings(aws_endpoint_url=f"http://127.0.0.1:{free_port()}")

    with pytest.raises(ApplicationError) as err:
        provider(settings).list_nodes(ListNodesInput(pool="cache", config=config("g")))

    assert not err.value.non_retryable
    assert err.value.message.startswith("failed to describe AWS AutoScaling group")


def test_clients_are_created_lazily(aws_settings: Settings) -> None:
    prov = provider(aws_settings)
    assert prov._clients == {}

    client = prov.autoscaling

    assert client is prov.autoscaling
    assert client.meta.endpoint_url == aws_settings.aws_endpoint_url
    assert client.meta.region_name == "us-east-1"
    assert set(prov._clients) == {"autoscaling"}


# ---- list_nodes ---------------------------------------------------------------


def test_list_nodes_names_instances_by_their_node_tag(
    aws_settings: Settings, autoscaling: Any, ec2: Any, make_asg: Callable[..., str]
) -> None:
    group = make_asg(desired=2)
    first, second = member_ids(autoscaling, group)
    prov = provider(aws_settings)
    added = provision(prov, group, "n1", [first, second]).node
    terminate(prov, group, Node(id=second, provider_ref=second, created_at=datetime.now(UTC)))

    res = prov.list_nodes(ListNodesInput(pool="cache", config=config(group)))

    assert res.nodes is not None
    by_ref = {n.provider_ref: n for n in res.nodes}
    assert set(by_ref) == {first, added.provider_ref}
    assert by_ref[added.provider_ref].id == "n1"
    assert by_ref[first].id == first
    assert by_ref[first].address == instance(ec2, first)["PrivateIpAddress"]
    assert by_ref[first].state is NodeState.READY
    assert res.events == []


def test_list_nodes_of_empty_group(aws_settings: Settings, make_asg: Callable[..., str]) -> None:
    group = make_asg(desired=0)

    res = provider(aws_settings).list_nodes(ListNodesInput(pool="cache", config=config(group)))

    assert res.nodes == []
