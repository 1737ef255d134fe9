"""The connector over EC2 instances, against moto's server over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from scaleflow.connector.app import create_connector_app
from scaleflow.connector.backends import SERVICE_TAG, Ec2Backend
from scaleflow.connector.models import ServiceDefinition
from tests.aws_fixtures import AWS_REGION, IMAGE_ID
from tests.connector import serve

WEB = ServiceDefinition(name="web", image_id=IMAGE_ID, instance_type="t3.micro")
API = ServiceDefinition(name="api", image_id=IMAGE_ID, instance_type="t3.small")
NO_IMAGE = ServiceDefinition(name="no-image")


@pytest.fixture
def http(moto_url: str) -> Iterator[httpx.Client]:
    backend = Ec2Backend(endpoint_url=moto_url, region=AWS_REGION)
    app = create_connector_app(backend, [WEB, API, NO_IMAGE])
    with serve(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client


def instances(ec2: Any, service: str, states: tuple[str, ...]) -> list[dict[str, Any]]:
    resp = ec2.describe_instances(
        Filters=[
            {"Name": f"tag:{SERVICE_TAG}", "Values": [service]},
            {"Name": "instance-state-name", "Values": list(states)},
        ]
    )
    return [i for r in resp["Reservations"] for i in r["Instances"]]


LIVE = ("pending", "running")


def test_scale_runs_and_terminates_tagged_instances(http: httpx.Client, ec2: Any) -> None:
    assert http.get("/service/web/status").json() == {"service": "web", "running_resources": 0}

    resp = http.post("/service/web/scale", json={"number": 2})
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"service": "web", "running_resources": 2}
    live = instances(ec2, "web", LIVE)
    assert len(live) == 2
    for inst in live:
        tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
        assert tags[SERVICE_TAG] == "web"
        assert inst["ImageId"] == IMAGE_ID
        assert inst["InstanceType"] == "t3.micro"
    assert http.get("/service/web/status").json()["running_resources"] == 2

    # Idempotent: no third instance.
    assert http.post("/service/web/scale", json={"number": 2}).json()["running_resources"] == 2
    assert {i["InstanceId"] for i in instances(ec2, "web", LIVE)} == {i["InstanceId"] for i in live}

    resp = http.post("/service/web/scale", json={"number": 0})
    assert resp.json() == {"service": "web", "running_resources": 0}
    assert instances(ec2, "web", LIVE) == []
    gone = instances(ec2, "web", ("shutting-down", "terminated"))
    assert {i["InstanceId"] for i in gone} == {i["InstanceId"] for i in live}
    assert http.get("/service/web/status").json()["running_resources"] == 0


def test_services_are_counted_separately(http: httpx.Client, ec2: Any) -> None:
    http.post("/service/web/scale", json={"number": 2})
    http.post("/service/api/scale", json={"number": 1})
    # An untagged instance is nobody's.
    ec2.run_instances(ImageId=IMAGE_ID, InstanceType="t3.micro", MinCount=1, MaxCount=1)

    assert http.get("/service/web/status").json()["running_resources"] == 2
    assert http.get("/service/api/status").json()["running_resources"] == 1
    listed = {e["service"]: e["running_resources"] for e in http.get("/services").json()}
    assert listed == {"web": 2, "api": 1, "no-image": 0}
    (api,) = instances(ec2, "api", LIVE)
    assert api["InstanceType"] == "t3.small"

    resp = http.post("/service/web/scale", json={"number": 1})
    assert resp.json()["running_resources"] == 1
    assert http.get("/service/api/status").json()["running_resources"] == 1


def test_v1_start_and_kill(http: httpx.Client, ec2: Any) -> None:
    assert http.get("/service/web/start").json() == {"service": "web", "running_resources": 1}
    assert http.get("/service/web/start").json()["running_resources"] == 2
    assert http.get("/service/web/kill").json()["running_resources"] == 1
    assert len(instances(ec2, "web", LIVE)) == 1
    assert http.get("/service/web/kill").json()["running_resources"] == 0
    resp = http.get("/service/web/kill")
    assert resp.status_code == 409
    assert resp.json() == {"message": "No running resource for service web."}


def test_an_instance_terminated_behind_its_back_is_not_counted(
    http: httpx.Client, ec2: Any
) -> None:
    http.post("/service/web/scale", json={"number": 2})
    victim = instances(ec2, "web", LIVE)[0]["InstanceId"]
    ec2.terminate_instances(InstanceIds=[victim])

    assert http.get("/service/web/status").json()["running_resources"] == 1
    assert http.post("/service/web/scale", json={"number": 2}).json()["running_resources"] == 2
    assert victim not in {i["InstanceId"] for i in instances(ec2, "web", LIVE)}


def test_errors(http: httpx.Client) -> None:
    resp = http.get("/service/unknown/status")
    assert resp.status_code == 404
    assert resp.json() == {"message": "Undefined service: unknown."}

    resp = http.post("/service/web/scale", json={"number": -2})
    assert resp.status_code == 400
    assert resp.json() == {"message": "Parameter number must be >= 0, got -2."}

    resp = http.post("/service/no-image/scale", json={"number": 1})
    assert resp.status_code == 502
    assert "no-image has no image_id" in resp.json()["message"]


def test_an_unreachable_endpoint_is_502(aws_credentials: None) -> None:
    # Nothing listens on port 9 of loopback: every call is refused.
    backend = Ec2Backend(endpoint_url="http://127.0.0.1:9", region=AWS_REGION)
    app = create_connector_app(backend, [WEB])
    with serve(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        resp = client.get("/service/web/status")
        assert resp.status_code == 502
        assert "cannot list EC2 instances" in resp.json()["message"]
        resp = client.get("/services")
        assert resp.status_code == 502
