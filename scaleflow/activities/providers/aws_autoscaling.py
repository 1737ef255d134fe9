"""The ``aws-autoscaling`` provider: nodes are the EC2 instances of an Auto Scaling group.

Scale-out raises the group's DesiredCapacity by one per node and claims the instance
the group launches by tagging it ``scaleflow:node-id=<node id>``. Scale-in detaches
the instance with ``ShouldDecrementDesiredCapacity`` and then terminates it, as
chemtrail did.

Idempotency of ``provision`` rests on two tags:

- the EC2 tag ``scaleflow:node-id`` on a claimed instance: a retry finds it and
  returns it;
- the group tag ``scaleflow:provision:<node id>`` (the "marker"), written *before*
  the capacity is raised: a retry that finds it never raises the capacity blindly
  again; it waits for the instance the group owes it instead.

Provisions on one group are meant to run one at a time (the pool workflow runs one
operation at a time). Parallel ones stay correct on capacity, but two of them may
race to tag the same fresh instance.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError
from temporalio.exceptions import ApplicationError

from scaleflow.activities.notes import fatal, note, retryable
from scaleflow.core.activity_io import (
    ListNodesInput,
    ListNodesResult,
    ProvisionInput,
    ProvisionResult,
    TerminateInput,
)
from scaleflow.core.models import ActivityReport, EventNote, Node, NodeState, PoolConfig
from scaleflow.core.settings import Settings

SOURCE = "aws-autoscaling"
GROUP_KEY = "asg-name"
NODE_TAG = "scaleflow:node-id"
POOL_TAG = "scaleflow:pool"
MARKER_PREFIX = "scaleflow:provision:"
# A marker older than this belongs to a provision that gave up; ASGs allow only 50 tags.
MARKER_TTL_S = 86_400
# Where a Nomad client reports its instance id (chemtrail's node-to-instance map).
NOMAD_INSTANCE_ATTR = "unique.platform.aws.instance-id"

MSG_DESCRIBED = "successfully described AWS AutoScaling group"
MSG_DESCRIBE_FAILED = "failed to describe AWS AutoScaling group"
MSG_UPDATED = "successfully updated count of AWS AutoScaling group"
MSG_UPDATE_FAILED = "failed to update count of AWS AutoScaling group"

LIVE_EC2_STATES = ("pending", "running")
LIVE_LIFECYCLE = frozenset({"Pending", "Pending:Wait", "Pending:Proceed", "InService"})
# The group is already letting go of the instance: detaching again would fail.
LEAVING_LIFECYCLE = frozenset(
    {
        "Detaching",
        "Detached",
        "Terminating",
        "Terminating:Wait",
        "Terminating:Proceed",
        "Terminated",
    }
)

# Error codes that a later attempt can get past; everything else is fatal.
TRANSIENT_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "EC2ThrottledException",
        "PriorRequestNotComplete",
        "ServiceUnavailable",
        "Unavailable",
        "InternalFailure",
        "InternalError",
        "InternalServiceError",
        "RequestTimeout",
        "RequestTimeoutException",
        "ScalingActivityInProgress",
        "ResourceContention",
    }
)

# botocore retries throttling itself first; Temporal's retry policy takes over after.
# Short enough that one attempt fits the provision activity's 60 s start-to-close.
BOTO_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": 3},
    connect_timeout=5,
    read_timeout=15,
)

log = logging.getLogger(__name__)


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _is_transient(exc: Exception) -> bool:
    if isinstance(exc, ClientError):
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        return _error_code(exc) in TRANSIENT_CODES or status >= 500 or status == 429
    # Refused, reset or timed-out connections; not credential or parameter errors.
    return isinstance(exc, BotoConnectionError | HTTPClientError)


def aws_error(message: str, exc: Exception) -> ApplicationError:
    """Turn a boto3 failure into the twin "failed to ..." error, retryable or not."""
    log.warning("%s: %s", message, exc)
    full = f"{message}: {exc}"
    return retryable(full, SOURCE) if _is_transient(exc) else fatal(full, SOURCE)


def _tags(resource: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags") or []}


def _marker_value(target: int) -> str:
    # "<target capacity>@<epoch seconds>": the time lets stale markers be collected.
    return f"{target}@{int(time.time())}"


def _marker_time(value: str) -> int | None:
    try:
        return int(value.rsplit("@", 1)[1])
    except (IndexError, ValueError):
        return None


class AwsAutoScalingProvider:
    name = "aws-autoscaling"

    def __init__(
        self,
        settings: Settings,
        *,
        launch_wait_s: float = 20.0,
        poll_interval_s: float = 2.0,
    ) -> None:
        self.endpoint_url = settings.aws_endpoint_url
        self.region = settings.aws_region
        # How long one attempt waits for the group to launch the instance; after that
        # the activity fails retryably and the next attempt waits again.
        self.launch_wait_s = launch_wait_s
        self.poll_interval_s = poll_interval_s
        self._clients: dict[str, Any] = {}
        # Activities run in threads, and building a boto3 client is not thread-safe.
        self._lock = threading.Lock()

    # ---- clients ------------------------------------------------------------

    def _client(self, service: str) -> Any:
        with self._lock:
            client = self._clients.get(service)
            if client is None:
                client = boto3.session.Session().client(
                    service,
                    region_name=self.region,
                    endpoint_url=self.endpoint_url,
                    config=BOTO_CONFIG,
                )
                self._clients[service] = client
            return client

    @property
    def autoscaling(self) -> Any:
        return self._client("autoscaling")

    @property
    def ec2(self) -> Any:
        return self._client("ec2")

    def _call(self, failure: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
        try:
            return fn(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise aws_error(failure, exc) from exc

    # ---- AWS reads ------------------------------------------------------------

    @staticmethod
    def _group_name(config: PoolConfig) -> str:
        group = config.provider_config.get(GROUP_KEY, "").strip()
        if not group:
            raise fatal(
                f"pool {config.name!r} uses provider aws-autoscaling but its provider config "
                f"has no {GROUP_KEY!r} (the AWS AutoScaling group to scale)",
                SOURCE,
            )
        return group

    def _describe_group(self, group: str) -> dict[str, Any]:
        out = self._call(
            MSG_DESCRIBE_FAILED,
            self.autoscaling.describe_auto_scaling_groups,
            AutoScalingGroupNames=[group],
        )
        groups = out.get("AutoScalingGroups") or []
        if not groups:
            raise fatal(f"{MSG_DESCRIBE_FAILED}: group {group!r} not found", SOURCE)
        return groups[0]

    def _instances(self, filters: list[dict[str, Any]]) -> list[dict[str, Any]]:
        failure = "failed to describe AWS EC2 instances"
        try:
            pages = self.ec2.get_paginator("describe_instances").paginate(Filters=filters)
            return [i for page in pages for r in page["Reservations"] for i in r["Instances"]]
        except (ClientError, BotoCoreError) as exc:
            raise aws_error(failure, exc) from exc

    def _instances_by_id(self, ids: Iterable[str]) -> list[dict[str, Any]]:
        """Live instances among ``ids``; a filter, unlike InstanceIds, skips unknown ids."""
        ids = sorted(set(ids))
        out: list[dict[str, Any]] = []
        for i in range(0, len(ids), 100):
            out += self._instances(
                [
                    {"Name": "instance-id", "Values": ids[i : i + 100]},
                    {"Name": "instance-state-name", "Values": list(LIVE_EC2_STATES)},
                ]
            )
        return out

    def _claimed_instance(self, node_id: str) -> dict[str, Any] | None:
        found = self._instances(
            [
                {"Name": f"tag:{NODE_TAG}", "Values": [node_id]},
                {"Name": "instance-state-name", "Values": list(LIVE_EC2_STATES)},
            ]
        )
        return found[0] if found else None

    @staticmethod
    def _live_members(asg: dict[str, Any]) -> list[dict[str, Any]]:
        return [i for i in asg.get("Instances") or [] if i.get("LifecycleState") in LIVE_LIFECYCLE]

    @staticmethod
    def _node(inst: dict[str, Any], node_id: str, state: NodeState) -> Node:
        return Node(
            id=node_id,
            provider_ref=inst["InstanceId"],
            address=inst.get("PrivateIpAddress") or None,
            state=state,
            created_at=inst.get("LaunchTime") or datetime.now(UTC),
        )

    # ---- group tags and capacity ---------------------------------------------

    def _put_marker(self, group: str, node_id: str, target: int) -> None:
        tag = {
            "ResourceId": group,
            "ResourceType": "auto-scaling-group",
            "Key": MARKER_PREFIX + node_id,
            "Value": _marker_value(target),
            "PropagateAtLaunch": False,
        }
        self._call(MSG_UPDATE_FAILED, self.autoscaling.create_or_update_tags, Tags=[tag])

    def _drop_markers(self, group: str, keys: list[str]) -> None:
        """Best effort: a marker left behind is collected after MARKER_TTL_S."""
        if not keys:
            return
        tags = [{"ResourceId": group, "ResourceType": "auto-scaling-group", "Key": k} for k in keys]
        try:
            self.autoscaling.delete_tags(Tags=tags)
        except (ClientError, BotoCoreError) as exc:
            log.warning(
                "failed to delete tags %s of AWS AutoScaling group %s: %s", keys, group, exc
            )

    def _stale_markers(self, asg: dict[str, Any]) -> list[str]:
        now = time.time()
        stale = []
        for key, value in _tags(asg).items():
            at = _marker_time(value)
            if key.startswith(MARKER_PREFIX) and (at is None or now - at > MARKER_TTL_S):
                stale.append(key)
        return stale

    def _raise_capacity(self, group: str, asg: dict[str, Any], node_id: str) -> None:
        """Set DesiredCapacity to one above what ``asg`` shows, marker first."""
        target = int(asg["DesiredCapacity"]) + 1
        if target > int(asg["MaxSize"]):
            # No retry will come for this node's marker (a retry may have written it).
            self._drop_markers(group, [MARKER_PREFIX + node_id])
            raise fatal(
                f"{MSG_UPDATE_FAILED}: DesiredCapacity {target} would exceed "
                f"MaxSize {asg['MaxSize']} of group {group!r}",
                SOURCE,
            )
        # The marker goes first: a crash between the two leaves a marker and no raise,
        # which the retry repairs; the reverse order could raise the capacity twice.
        self._put_marker(group, node_id, target)
        try:
            # An absolute value, so a repeat after a stale read cannot add a second node.
            self.autoscaling.set_desired_capacity(
                AutoScalingGroupName=group, DesiredCapacity=target, HonorCooldown=False
            )
        except (ClientError, BotoCoreError) as exc:
            err = aws_error(MSG_UPDATE_FAILED, exc)
            if err.non_retryable:
                # No retry will come for this marker; do not leave it behind.
                self._drop_markers(group, [MARKER_PREFIX + node_id])
            raise err from exc

    # ---- the provider contract ---------------------------------------------

    def provision(self, req: ProvisionInput) -> ProvisionResult:
        group = self._group_name(req.config)
        marker = MARKER_PREFIX + req.node_id

        # A retry after a crash finds the instance it already claimed.
        inst = self._claimed_instance(req.node_id)
        if inst is not None:
            self._drop_markers(group, [marker])
            return ProvisionResult(
                node=self._node(inst, req.node_id, NodeState.PROVISIONING),
                events=[
                    note(
                        f"found AWS EC2 instance {inst['InstanceId']} of node {req.node_id}",
                        SOURCE,
                    )
                ],
            )

        asg = self._describe_group(group)
        events = [note(MSG_DESCRIBED, SOURCE)]
        raised = False
        if marker not in _tags(asg):
            self._drop_markers(group, self._stale_markers(asg))
            self._raise_capacity(group, asg, req.node_id)
            events.append(note(MSG_UPDATED, SOURCE))
            raised = True
            asg = self._describe_group(group)

        inst = self._await_instance(group, asg, req, events, raised)
        self._claim(inst, req)
        self._drop_markers(group, [marker])
        events.append(
            note(f"claimed AWS EC2 instance {inst['InstanceId']} for node {req.node_id}", SOURCE)
        )
        return ProvisionResult(
            node=self._node(inst, req.node_id, NodeState.PROVISIONING), events=events
        )

    def _await_instance(
        self,
        group: str,
        asg: dict[str, Any],
        req: ProvisionInput,
        events: list[EventNote],
        raised: bool,
    ) -> dict[str, Any]:
        """Wait for an instance of the group that no node holds yet."""
        known = set(req.known_refs)
        deadline = time.monotonic() + self.launch_wait_s
        while True:
            members = self._live_members(asg)
            instances = self._instances_by_id(
                m["InstanceId"] for m in members if m["InstanceId"] not in known
            )
            mine = [i for i in instances if _tags(i).get(NODE_TAG) == req.node_id]
            free = [i for i in instances if NODE_TAG not in _tags(i)]
            if mine or free:
                # The newest free instance is the one this provision's raise launched.
                ordered = sorted(free, key=lambda i: (i.get("LaunchTime"), i["InstanceId"]))
                return mine[0] if mine else ordered[-1]
            if not raised and len(members) >= int(asg["DesiredCapacity"]):
                # The group is settled and holds nothing for this node: the raise this
                # marker records never landed (or another claim took its instance).
                # Once per attempt, so that stale reads cannot spin here.
                self._raise_capacity(group, asg, req.node_id)
                events.append(note(MSG_UPDATED, SOURCE))
                raised = True
                asg = self._describe_group(group)
                continue
            if time.monotonic() >= deadline:
                raise retryable(
                    f"AWS AutoScaling group {group} has not launched an instance "
                    f"for node {req.node_id} yet",
                    SOURCE,
                )
            time.sleep(self.poll_interval_s)
            asg = self._describe_group(group)

    def _claim(self, inst: dict[str, Any], req: ProvisionInput) -> None:
        self._call(
            f"failed to tag AWS EC2 instance {inst['InstanceId']}",
            self.ec2.create_tags,
            Resources=[inst["InstanceId"]],
            Tags=[{"Key": NODE_TAG, "Value": req.node_id}, {"Key": POOL_TAG, "Value": req.pool}],
        )

    def terminate(self, req: TerminateInput) -> ActivityReport:
        group = self._group_name(req.config)
        iid = req.node.provider_ref or req.node.attributes.get(NOMAD_INSTANCE_ATTR, "")
        if not iid:
            # Compensation of a provision that never returned: the node is known by id
            # only, and its instance (if one was claimed) by its tag.
            claimed = self._claimed_instance(req.node.id)
            if claimed is None:
                # Lowering the capacity here would let the group pick any instance to
                # kill; an unclaimed instance shows up in list_nodes instead.
                self._drop_markers(group, [MARKER_PREFIX + req.node.id])
                return ActivityReport(
                    events=[note(f"no AWS EC2 instance was made for node {req.node.id}", SOURCE)]
                )
            iid = claimed["InstanceId"]
        events: list[EventNote] = []

        detach_failed = f"failed to detach instance {iid} from AWS AutoScaling group"
        out = self._call(
            detach_failed,
            self.autoscaling.describe_auto_scaling_instances,
            InstanceIds=[iid],
        )
        membership = out.get("AutoScalingInstances") or []
        if membership:
            member = membership[0]
            state = str(member.get("LifecycleState", ""))
            if member.get("AutoScalingGroupName") != group:
                raise fatal(
                    f"{detach_failed}: it belongs to group "
                    f"{member.get('AutoScalingGroupName')!r}, not {group!r}",
                    SOURCE,
                )
            if state.startswith("Pending"):
                # Only InService or Standby instances can be detached; this one will be soon.
                raise retryable(f"{detach_failed}: it is still {state}", SOURCE)
            if state not in LEAVING_LIFECYCLE:
                self._detach(group, iid, detach_failed)
                events.append(
                    note(f"successfully detached instance {iid} from AWS AutoScaling group", SOURCE)
                )
        # Not a member any more: an earlier attempt detached it (and decremented the
        # capacity), so only the termination is left.

        try:
            self.ec2.terminate_instances(InstanceIds=[iid])
        except ClientError as exc:
            if _error_code(exc) != "InvalidInstanceID.NotFound":
                raise aws_error(f"failed to terminate AWS EC2 instance {iid}", exc) from exc
            events.append(note(f"AWS EC2 instance {iid} was already gone", SOURCE))
        except BotoCoreError as exc:
            raise aws_error(f"failed to terminate AWS EC2 instance {iid}", exc) from exc
        else:
            events.append(note(f"successfully terminated AWS EC2 instance {iid}", SOURCE))
        return ActivityReport(events=events)

    def _detach(self, group: str, iid: str, failure: str) -> None:
        try:
            self.autoscaling.detach_instances(
                InstanceIds=[iid],
                AutoScalingGroupName=group,
                ShouldDecrementDesiredCapacity=True,
            )
        except ClientError as exc:
            # Detached by someone else between our look and our call: the goal is met.
            if _error_code(exc) == "ValidationError" and "not part of" in str(exc):
                return
            raise aws_error(failure, exc) from exc
        except BotoCoreError as exc:
            raise aws_error(failure, exc) from exc

    def list_nodes(self, req: ListNodesInput) -> ListNodesResult:
        group = self._group_name(req.config)
        members = {m["InstanceId"]: m for m in self._live_members(self._describe_group(group))}
        nodes = []
        for inst in self._instances_by_id(members):
            iid = inst["InstanceId"]
            in_service = members[iid].get("LifecycleState") == "InService"
            running = inst.get("State", {}).get("Name") == "running"
            state = NodeState.READY if in_service and running else NodeState.PROVISIONING
            nodes.append(self._node(inst, _tags(inst).get(NODE_TAG, iid), state))
        nodes.sort(key=lambda n: (n.created_at, n.provider_ref))
        return ListNodesResult(nodes=nodes)
