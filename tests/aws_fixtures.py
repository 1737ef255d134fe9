"""Fixtures for AWS: moto's threaded server standing in for AWS over real HTTP."""

from __future__ import annotations

import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from scaleflow.core.settings import Settings

AWS_REGION = "us-east-1"
IMAGE_ID = "ami-12c6146b"


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    # Port 0: the OS picks a free loopback port, so parallel runs do not collide.
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    # Dummy credentials so boto3 never looks for real ones (profiles, IMDS).
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", AWS_REGION)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    # moto (in this process) would otherwise load its catalogue of AMIs after every
    # reset, which costs seconds per test; instances launch from any image id.
    monkeypatch.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")


@pytest.fixture
def moto_url(moto_server: str, aws_credentials: None) -> Iterator[str]:
    yield moto_server
    # Each test starts from an empty account.
    req = urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST")
    urllib.request.urlopen(req, timeout=10).close()


@pytest.fixture
def aws_settings(moto_url: str) -> Settings:
    return Settings(aws_endpoint_url=moto_url, aws_region=AWS_REGION)


@pytest.fixture
def autoscaling(moto_url: str) -> Any:
    return boto3.client("autoscaling", endpoint_url=moto_url, region_name=AWS_REGION)


@pytest.fixture
def ec2(moto_url: str) -> Any:
    return boto3.client("ec2", endpoint_url=moto_url, region_name=AWS_REGION)


@pytest.fixture
def make_asg(autoscaling: Any, ec2: Any) -> Callable[..., str]:
    """Create a launch template and an Auto Scaling group; returns the group's name."""

    def make(desired: int = 1, min_size: int = 0, max_size: int = 5) -> str:
        name = f"asg-{uuid.uuid4().hex[:8]}"
        ec2.create_launch_template(
            LaunchTemplateName=f"{name}-lt",
            LaunchTemplateData={"ImageId": IMAGE_ID, "InstanceType": "t3.micro"},
        )
        autoscaling.create_auto_scaling_group(
            AutoScalingGroupName=name,
            LaunchTemplate={"LaunchTemplateName": f"{name}-lt", "Version": "$Latest"},
            MinSize=min_size,
            MaxSize=max_size,
            DesiredCapacity=desired,
            AvailabilityZones=[f"{AWS_REGION}a"],
        )
        return name

    return make
