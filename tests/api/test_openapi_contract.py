"""The OpenAPI document against the running API: schemathesis, every check but those
the seeds' contracts contradict (docs/openapi.md), over every operation.

The API runs for real: its own Temporal dev server, uvicorn on a loopback port, and a
worker that runs every workflow. The worker's activities all refuse at once (one
dynamic activity, non-retryable): the entities answer every update and query as they
do in production, operations start and fail fast, and nothing outside the test is
touched (no memcached, AWS, connector or Redis). The whole stack lives on an event loop
of its own in a thread, because schemathesis sends its requests synchronously.

``test_requests_sent`` runs last: it asserts that every operation was tested, with at
least ``MIN_REQUESTS`` requests in all, and that the API served each of them (run the
file whole, and with ``--dist loadfile`` under xdist).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import pkgutil
import re
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
import requests
import schemathesis
import uvicorn
from fastapi import FastAPI
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from schemathesis.checks import CHECKS, CheckFunction, load_all_checks
from temporalio import activity
from temporalio.common import RawValue
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from scaleflow.activities import processes
from scaleflow.api.app import create_app
from scaleflow.api.schemas.common import json_numbers
from scaleflow.core.settings import Settings
from scaleflow.devserver import DEV_SERVER_EXTRA_ARGS
from scaleflow.worker import WORKFLOWS
from scaleflow.workflows import attributes
from tests.servers import temporal_cli

load_all_checks()


def import_whole(package: ModuleType) -> None:
    """Every module of ``package``, now. pytest rewrites the asserts of a plugin's
    modules (schemathesis is one) as it imports them, with ``ast.parse``; schemathesis
    imports some only when a check or its report first needs them, inside a hypothesis
    test, whose raised recursion limit makes CPython 3.11.7's parser fail ("AST
    constructor recursion depth mismatch"). Imported at collection, they are parsed
    before any test runs."""
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + ".", lambda _: None):
        with contextlib.suppress(ImportError):  # optional extras (allure) are not installed
            importlib.import_module(info.name)


import_whole(schemathesis)
CHECK_FUNCTIONS: list[CheckFunction] = list(CHECKS.get_all())
MIN_REQUESTS = 2000
# Per operation, for the fuzzing phase; the examples and coverage phases add their own.
MAX_EXAMPLES = 12
SEED = 20240611

# Every check schemathesis has, but these, each for a seed's contract (docs/openapi.md).
EXCLUDED_CHECKS: dict[str, str] = {}
# Checks left out on some operations only (path regex -> check -> why).
EXCLUDED_ON: dict[str, dict[str, str]] = {
    r"^/api/(manager|scaler|poolsize)/": {
        "positive_data_acceptance": "seeds 001/002 answer 400 to a well-formed request "
        "the pool's state refuses (already at its maximum or minimum, no such node, no "
        "node to terminate, a threshold not below the current maximum)",
    },
}

ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]  # schemathesis' default
# Statuses some checks accept beyond their default, where a seed says so (path regex ->
# check -> statuses).
EXPECTED_ON: dict[str, dict[str, list[str | int]]] = {
    # ORIGINALS (chemtrail): 422 for a class with no (enabled) policy, provider or nodes,
    # 412 past MinCount/MaxCount: answers to a well-formed request, given the state.
    r"^/v1/": {"positive_data_acceptance": [*ACCEPTED, 412, 422]},
    # Seed 003: 501 "Undefined compute: X." answers a compute that does not exist; /scale
    # answers 400 while the service has used no compute.
    r"^/service/": {
        "not_a_server_error": ["2xx", "3xx", "4xx", 501],
        "positive_data_acceptance": [*ACCEPTED, 400],
    },
    # Restored metadata must be consistent (proxies in the clusters that name them, whole
    # chunks): rules across the document that no schema states.
    r"^/api/v2/metadata$": {"positive_data_acceptance": [*ACCEPTED, 400]},
}
DOC = create_app(Settings()).openapi()
SCHEMA = schemathesis.openapi.from_dict(DOC)


def config_for(path: str) -> schemathesis.Config:
    """The run's configuration, with the statuses the seeds add on ``path``."""
    checks: dict[str, Any] = {}
    for pattern, statuses in EXPECTED_ON.items():
        if re.search(pattern, path):
            checks |= {name: {"expected-statuses": s} for name, s in statuses.items()}
    return schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "generation": {
                "max-examples": MAX_EXAMPLES,
                "deterministic": True,
                "database": "none",
            },
            "request-timeout": 60,
            "phases": {"stateful": {"enabled": False}},
            "checks": checks,
        }
    )


def checks_for(path: str) -> list[CheckFunction]:
    excluded = set(EXCLUDED_CHECKS)
    for pattern, checks in EXCLUDED_ON.items():
        if re.search(pattern, path):
            excluded |= set(checks)
    return [c for c in CHECK_FUNCTIONS if c.__name__ not in excluded]


def nothing_negated(case: schemathesis.Case) -> bool:
    """A negative case in which schemathesis itself found nothing it negated ("Positive
    test case"): an optional body left out. It is a valid request (docs/openapi.md)."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_negative:
        return False
    return getattr(meta.phase.data, "description", None) == "Positive test case"


ENABLED_CHECK = {
    "Enabled": True,
    "Resource": "cpu",
    "ComparisonOperator": "greater-than",
    "ComparisonPercentage": 80,
    "Action": "scale-out",
}


def obey_autoscaling_rules(auto: dict[str, object]) -> None:
    """``PolicyAutoScaling``'s rules: Nomad reads cpu or memory; Prometheus needs a
    Query, and a Metric for the threshold checks; target-value needs Target and Metric."""
    source, strategy = auto.get("Source", "nomad"), auto.get("Strategy", "threshold")
    if source == "nomad" and auto.get("Metric") not in (None, "cpu", "memory"):
        auto["Metric"] = "cpu"
    if source == "prometheus" and not auto.get("Query"):
        auto["Query"] = "up"
    if (strategy == "target-value" or source == "prometheus") and not auto.get("Metric"):
        auto["Metric"] = "cpu"
    if strategy == "target-value" and auto.get("Target") is None:
        auto["Target"] = 1


def obey_cross_field_rules(case: schemathesis.Case) -> None:
    """A schema-valid case made valid for the rules that tie fields together, which JSON
    Schema cannot state (each is documented on its route): the positive cases must then
    be accepted."""
    body = case.body
    if not isinstance(body, dict):
        return
    op = f"{case.method} {case.path}"
    if op == "PUT /v1/policy/{client_class}":
        # Class names the path's class; MinCount <= MaxCount; an ASG for aws-autoscaling.
        if "Class" in body:
            body["Class"] = unquote(case.path_parameters["client_class"])
        low, high = body.get("MinCount"), body.get("MaxCount")
        if isinstance(low, int) and isinstance(high, int) and low > high:
            body["MinCount"], body["MaxCount"] = high, low
        if body.get("Provider") == "aws-autoscaling":
            body["ProviderConfig"] = {**body.get("ProviderConfig", {}), "asg-name": "asg"}
        auto = body.get("AutoScaling")
        if isinstance(auto, dict):
            obey_autoscaling_rules(auto)
            # Enabled threshold scaling needs an enabled check to evaluate.
            checks = body.get("Checks") or {}
            threshold = auto.get("Strategy", "threshold") == "threshold"
            enabled = any(c.get("Enabled", True) for c in checks.values())
            if auto.get("Enabled") and threshold and not enabled:
                body["Checks"] = {**checks, "cpu-high": ENABLED_CHECK}
    elif op == "PUT /api/v2/clusters/migrations":
        # Each [start, end] with start <= end.
        slot_range = body["slot_range"]
        slot_range["range_list"] = [sorted(r) for r in slot_range.get("range_list", [])]


# ---- the stack ---------------------------------------------------------------------


@activity.defn(dynamic=True)
async def refuse(args: Sequence[RawValue]) -> None:
    """Every activity: refused, for good, so operations fail fast with no side effect."""
    name = activity.info().activity_type
    raise ApplicationError(f"{name}: no side effects in the OpenAPI test", non_retryable=True)


@dataclass
class LiveApi:
    settings: Settings
    base_url: str = ""
    app: FastAPI | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    sent: int = 0
    operations: set[str] = field(default_factory=set)

    @property
    def served(self) -> int:
        assert self.app is not None
        return int(self.app.state.requests)


@contextlib.asynccontextmanager
async def temporal() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_cli(),
        data_converter=pydantic_data_converter,
        search_attributes=attributes.ALL,
        dev_server_log_level="error",
        dev_server_extra_args=DEV_SERVER_EXTRA_ARGS,
    )
    try:
        yield env
    finally:
        await env.shutdown()


async def serve(live: LiveApi) -> None:
    async with temporal() as env:
        worker = Worker(
            env.client,
            task_queue=live.settings.task_queue,
            workflows=WORKFLOWS,
            activities=[refuse],
        )
        port = processes.free_port()
        live.app = create_app(live.settings, env.client)
        config = uvicorn.Config(
            live.app, host="127.0.0.1", port=port, log_config=None, access_log=False
        )
        server = uvicorn.Server(config)
        async with worker:
            task = asyncio.create_task(server.serve())
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
            live.base_url = f"http://127.0.0.1:{port}"
            live.ready.set()
            while not live.stop.is_set():
                await asyncio.sleep(0.05)
            server.should_exit = True
            await task


def run_stack(live: LiveApi) -> None:
    # Every refused activity would log a warning with its traceback.
    for name in ("temporalio.activity", "temporalio.workflow", "temporalio.worker"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        asyncio.run(serve(live))
    except BaseException as exc:  # reported by the fixture
        live.error = exc
        live.ready.set()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApi]:
    tmp: Path = tmp_path_factory.mktemp("openapi")
    settings = Settings(
        task_queue=f"openapi-{uuid.uuid4().hex[:8]}",
        state_dir=tmp / "state",
        computes_file=tmp / "computes.toml",
        default_pool_name="oa-default",
        update_wait_s=10,
        api_token=None,  # whatever the environment says: the checks send no token
    )
    live = LiveApi(settings=settings)
    thread = threading.Thread(target=run_stack, args=(live,), name="openapi-stack", daemon=True)
    thread.start()
    assert live.ready.wait(120), "the stack did not start"
    if live.error is not None:
        raise live.error
    # The memcache surfaces' pool, so that they answer more than 404.
    policy = {"MinCount": 1, "MaxCount": 8, "Provider": "no-op", "Engine": "memcached"}
    resp = httpx.put(f"{live.base_url}/v1/policy/{settings.default_pool_name}", json=policy)
    assert resp.status_code == 200, resp.text
    try:
        yield live
    finally:
        live.stop.set()
        thread.join(60)
        assert live.error is None, live.error


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


# ---- the checks --------------------------------------------------------------------

COUNTED: list[LiveApi] = []


def check_case(case: schemathesis.Case, live: LiveApi, session: requests.Session) -> None:
    # Integers go as JSON integers, as clients send them: the broker and genisys refuse
    # 8.0 for a count (their tests say so), which JSON Schema calls an integer too.
    case.body = json_numbers(case.body)
    if case.meta is not None and case.meta.generation.mode.is_positive:
        obey_cross_field_rules(case)
    live.sent += 1
    live.operations.add(case.operation.label)
    if not COUNTED:
        COUNTED.append(live)
    checks = checks_for(case.path)
    if nothing_negated(case):
        checks = [c for c in checks if c.__name__ != "negative_data_rejection"]
    case.call_and_validate(base_url=live.base_url, session=session, checks=checks)


def operation_test() -> Callable[..., None]:
    @hypothesis_settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        # Checks of data generation (slow or filtered draws), not of the API.
        suppress_health_check=list(HealthCheck),
    )
    def test(case: schemathesis.Case, live: LiveApi, session: requests.Session) -> None:
        check_case(case, live, session)

    return test


# One test function per operation, named after it: ``SCHEMA.parametrize()`` on a single
# function gives every operation's test the same node id, and pytest-xdist's
# ``--dist loadfile`` (make test) then runs only one of them.
LABELS = [result.ok().label for result in SCHEMA.get_all_operations()]
for _label in LABELS:
    _name = "test_" + re.sub(r"\W+", "_", _label).strip("_")
    assert _name not in globals(), _name
    # Its own schema object: a config's per-operation section would act as a filter
    # that ``include`` adds to (schemathesis 4.32), so the statuses go in each config.
    _schema = schemathesis.openapi.from_dict(DOC, config=config_for(_label.split(" ", 1)[1]))
    globals()[_name] = _schema.include(name=_label).parametrize()(operation_test())


def test_requests_sent(capsys: pytest.CaptureFixture[str]) -> None:
    """Every operation was tested, with at least ``MIN_REQUESTS`` requests in all, and
    the API served every one of them."""
    # Filled by this file's operation tests, which --dist loadfile runs before it.
    assert COUNTED, "no operation test ran: run the whole file"
    live = COUNTED[0]
    every = set(LABELS)
    with capsys.disabled():
        print(
            f"\nOpenAPI contract: {len(live.operations)} of {len(every)} operations, "
            f"{live.sent} requests sent, {live.served} served"
        )
    assert live.operations == every, sorted(every - live.operations)
    assert live.sent >= MIN_REQUESTS
    assert live.served >= live.sent
