"""The nomad engine against the Nomad HTTP API test double (real HTTP, no Temporal)."""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from scaleflow.activities.engines import EngineActivities
from scaleflow.activities.nomad import NomadClient, NomadEngine
from scaleflow.core.activity_io import DrainInput, LoadInput, ReadyInput
from scaleflow.core.models import ActivityReport, Engine, Node, NodeState, PoolConfig
from scaleflow.core.settings import Settings
from tests.doubles.nomad_double import NomadApiDouble, nomad_double

CLASS = "web"


def noop(*_: object) -> None:
    return None


@pytest.fixture
def nomad() -> Iterator[tuple[NomadApiDouble, str]]:
    with nomad_double() as pair:
        yield pair


def make_engine(url: str, **kw: object) -> NomadEngine:
    return NomadEngine(Settings(nomad_address=url, nomad_poll_interval_s=0.05, **kw))


@pytest.fixture
def engine(nomad: tuple[NomadApiDouble, str]) -> NomadEngine:
    return make_engine(nomad[1])


@pytest.fixture
def double(nomad: tuple[NomadApiDouble, str]) -> NomadApiDouble:
    return nomad[0]


def config() -> PoolConfig:
    return PoolConfig(name="pool-a", engine=Engine.NOMAD, node_class=CLASS)


def pool_node(node_id: str, instance: str, **attributes: str) -> Node:
    return Node(
        id=node_id,
        provider_ref=instance,
        created_at=datetime.now(UTC),
        attributes=dict(attributes),
    )


def deadline_in(seconds: float) -> int:
    return time.time_ns() + int(seconds * 1e9)


def messages(result: ActivityReport) -> list[str]:
    return [e.message for e in result.events]


# ---- drain ----------------------------------------------------------------------


def test_drain_reports_each_stop_then_completion(
    engine: NomadEngine, double: NomadApiDouble
) -> None:
    nid = double.add_node(CLASS, "i-aaa")
    a1 = double.add_alloc(nid, cpu_shares=500)
    a2 = double.add_alloc(nid, cpu_shares=500)
    double.add_alloc(nid, cpu_shares=500, client_status="complete", desired_status="stop")

    result = engine.drain(
        DrainInput(node=pool_node("n1", "i-aaa"), config=config(), deadline_ns=deadline_in(300)),
        noop,
    )

    assert result.completed is True
    assert result.remaining == 0
    assert {e.source for e in result.events} == {"nomad"}
    assert messages(result) == [
        f'alloc "{a1}" status running -> complete',
        f'alloc "{a2}" status running -> complete',
        f'all allocations on node "{nid}" have stopped',
        f"drain complete for node {nid}",
    ]
    # One drain request, in Nomad's documented shape, with the time left as its deadline.
    assert double.drain_posts_for(nid) == 1
    body = double.drain_requests[0].body
    assert body["Meta"] == {"message": "drained by scaleflow"}
    assert body["DrainSpec"]["IgnoreSystemJobs"] is False
    assert 290e9 < body["DrainSpec"]["Deadline"] <= 300e9
    assert double.nodes[nid].eligibility == "ineligible"
    assert double.nodes[nid].drain_strategy is None


def test_drain_of_empty_node_matches_seed_events(
    engine: NomadEngine, double: NomadApiDouble
) -> None:
    nid = double.add_node(CLASS, "i-empty")
    result = engine.drain(
        DrainInput(
            node=pool_node("n1", "i-empty", nomad_node_id=nid),
            config=config(),
            deadline_ns=deadline_in(300),
        ),
        noop,
    )
    assert result.completed is True
    assert messages(result) == [
        f'all allocations on node "{nid}" have stopped',
        f"drain complete for node {nid}",
    ]


def test_resumed_drain_does_not_post_again(engine: NomadEngine, double: NomadApiDouble) -> None:
    nid = double.add_node(CLASS, "i-bbb")
    for _ in range(3):
        double.add_alloc(nid, cpu_shares=100)
    node = pool_node("n1", "i-bbb", nomad_node_id=nid)
    # An earlier attempt started the drain, then its worker died.
    with NomadClient(engine.address) as client:
        client.drain(nid, 120 * 10**9)
    started_at = (double.nodes[nid].drain_strategy or {})["StartedAt"]

    # The retried activity follows that drain instead of restarting its deadline.
    result = engine.drain(
        DrainInput(node=node, config=config(), deadline_ns=deadline_in(300)), noop
    )

    assert result.completed is True
    assert double.drain_posts_for(nid) == 1
    assert double.drain_requests[0].body["DrainSpec"]["Deadline"] == 120 * 10**9
    assert (double.nodes[nid].last_drain or {})["StartedAt"] == started_at
    assert messages(result)[-2:] == [
        f'all allocations on node "{nid}" have stopped',
        f"drain complete for node {nid}",
    ]


# ---- drain retried after a lost result ---------------------------------------------


def drain_activity(url: str) -> EngineActivities:
    return EngineActivities(Settings(nomad_address=url, nomad_poll_interval_s=0.05))


def retry_env(heartbeat_details: list[Any] | None = None) -> ActivityEnvironment:
    """Attempt 2 of an activity, with the last heartbeat of attempt 1 that got through."""
    env = ActivityEnvironment()
    env.info = dataclasses.replace(
        env.info, attempt=2, heartbeat_details=list(heartbeat_details or [])
    )
    return env


def posts(double: NomadApiDouble) -> list[tuple[str, str]]:
    return [r for r in double.requests if r[0] == "POST"]


@pytest.mark.parametrize("heartbeat_got_through", [False, True])
def test_retry_after_a_finished_drain_does_not_post_again(
    nomad: tuple[NomadApiDouble, str], heartbeat_got_through: bool
) -> None:
    double, url = nomad
    nid = double.add_node(CLASS, "i-ccc")
    for _ in range(3):
        double.add_alloc(nid, cpu_shares=100)
    acts = drain_activity(url)
    req = DrainInput(node=pool_node("n1", "i-ccc"), config=config(), deadline_ns=deadline_in(300))
    beats: list[tuple[Any, ...]] = []
    first = ActivityEnvironment()
    first.on_heartbeat = lambda *d: beats.append(d)
    assert first.run(acts.drain_node, req).completed is True

    # The worker died before reporting that result, so Temporal runs the activity again
    # with the same input (first=True); Nomad shows no drain strategy any more.
    details = [beats[-1][0]] if heartbeat_got_through else []
    result = retry_env(details).run(acts.drain_node, req)

    assert posts(double) == [("POST", f"/v1/node/{nid}/drain")]
    assert result.completed is True
    assert result.remaining == 0
    assert messages(result) == [
        f'drain of node "{nid}" was requested by an earlier attempt',
        f'all allocations on node "{nid}" have stopped',
        f"drain complete for node {nid}",
    ]
    assert double.nodes[nid].eligibility == "ineligible"
    assert (double.nodes[nid].last_drain or {})["Status"] == "complete"
    # Attempt 1 recorded its drain request before anything else, for a retry to find.
    assert beats[0] == ({"node": nid, "drain_requested": True},)


def test_retry_follows_a_finished_drain_whose_allocation_is_still_stopping(
    nomad: tuple[NomadApiDouble, str],
) -> None:
    double, url = nomad
    nid = double.add_node(CLASS, "i-ddd")
    aid = double.add_alloc(nid, cpu_shares=100)
    acts = drain_activity(url)
    req = DrainInput(node=pool_node("n1", "i-ddd"), config=config(), deadline_ns=deadline_in(300))
    assert ActivityEnvironment().run(acts.drain_node, req).completed is True
    # Nomad can call a drain complete while an allocation told to stop is still shutting
    # down; only LastDrain then shows the drain was ours and has finished.
    alloc = double.allocs[aid]
    alloc.client_status = "running"
    assert alloc.desired_status == "stop"
    stopped = threading.Timer(0.3, setattr, args=(alloc, "client_status", "complete"))
    stopped.start()
    try:
        result = retry_env().run(acts.drain_node, req)
    finally:
        stopped.cancel()

    assert posts(double) == [("POST", f"/v1/node/{nid}/drain")]
    assert result.completed is True
    assert messages(result) == [
        f'drain of node "{nid}" was requested by an earlier attempt',
        f"drain complete for node {nid}",
        f'alloc "{aid}" status running -> complete',
        f'all allocations on node "{nid}" have stopped',
    ]


@pytest.mark.parametrize("eligibility", ["eligible", "ineligible"])
def test_retry_whose_first_attempt_never_posted_drains_once(
    nomad: tuple[NomadApiDouble, str], eligibility: str
) -> None:
    double, url = nomad
    # Attempt 1 failed before its drain request; an operator may have left the node
    # ineligible, but its allocations still run, so it still needs draining.
    nid = double.add_node(CLASS, "i-eee", eligibility=eligibility)
    double.add_alloc(nid, cpu_shares=100)
    double.add_alloc(nid, cpu_shares=100)
    req = DrainInput(node=pool_node("n1", "i-eee"), config=config(), deadline_ns=deadline_in(300))

    result = retry_env().run(drain_activity(url).drain_node, req)

    assert posts(double) == [("POST", f"/v1/node/{nid}/drain")]
    assert result.completed is True
    assert not any("earlier attempt" in m for m in messages(result))


def test_drain_gives_up_after_deadline_and_grace(
    engine: NomadEngine, double: NomadApiDouble
) -> None:
    nid = double.add_node(CLASS, "i-stuck")
    double.add_alloc(nid, cpu_shares=100)
    double.add_alloc(nid, cpu_shares=100)
    double.set_node(nid, drain_paused=True)
    engine.drain_grace_s = 0.2
    beats: list[object] = []

    started = time.monotonic()
    result = engine.drain(
        DrainInput(node=pool_node("n1", "i-stuck"), config=config(), deadline_ns=deadline_in(0.2)),
        lambda *a: beats.append(a),
    )

    assert result.completed is False
    assert result.remaining == 2
    assert 0.3 <= time.monotonic() - started < 5
    assert messages(result)[-1] == f"drain deadline reached for node {nid}: 2 allocations left"
    assert beats, "the drain heartbeats while it waits"


def test_drain_past_deadline_forces_rather_than_waiting_forever(
    engine: NomadEngine, double: NomadApiDouble
) -> None:
    nid = double.add_node(CLASS, "i-late")
    double.add_alloc(nid, cpu_shares=100)
    double.add_alloc(nid, cpu_shares=100)
    result = engine.drain(
        DrainInput(node=pool_node("n1", "i-late"), config=config(), deadline_ns=time.time_ns()),
        noop,
    )
    # A zero Deadline means "no deadline" to Nomad; a passed deadline must force (-1).
    assert double.drain_requests[0].body["DrainSpec"]["Deadline"] == -1
    assert result.completed is True


def test_drain_of_unknown_node_is_not_retryable(
    engine: NomadEngine, double: NomadApiDouble
) -> None:
    node = pool_node("n1", "i-x", nomad_node_id="00000000-0000-0000-0000-000000000000")
    with pytest.raises(ApplicationError) as err:
        engine.drain(DrainInput(node=node, config=config(), deadline_ns=deadline_in(60)), noop)
    assert err.value.non_retryable is True
    assert err.value.details == ({"source": "nomad"},)
    assert double.drain_requests == []


def test_drain_of_unmapped_instance_is_not_retryable(
    engine: NomadEngine, double: NomadApiDouble
) -> None:
    double.add_node(CLASS, "i-other")
    double.add_node("other-class", "i-nowhere")  # right instance, wrong class
    with pytest.raises(ApplicationError) as err:
        engine.drain(
            DrainInput(
                node=pool_node("n1", "i-nowhere"), config=config(), deadline_ns=deadline_in(60)
            ),
            noop,
        )
    assert err.value.non_retryable is True


# ---- load -----------------------------------------------------------------------


def test_load_reads_cpu_not_memory_and_skips_self(nomad: tuple[NomadApiDouble, str]) -> None:
    double, url = nomad
    # busy_cpu: 75% of CPU, 5% of memory; busy_mem: 10% of CPU, 90% of memory.
    busy_cpu = double.add_node(CLASS, "i-cpu", cpu_shares=4000, memory_mb=10_000)
    double.add_alloc(busy_cpu, cpu_shares=2000, memory_mb=250)
    double.add_alloc(busy_cpu, cpu_shares=1000, memory_mb=250, client_status="pending")
    # Not counted: finished, or told to stop.
    double.add_alloc(busy_cpu, cpu_shares=900, client_status="complete", desired_status="stop")
    double.add_alloc(busy_cpu, cpu_shares=900, desired_status="stop")
    busy_mem = double.add_node(CLASS, "i-mem", cpu_shares=4000, memory_mb=10_000)
    double.add_alloc(busy_mem, cpu_shares=400, memory_mb=9000)
    me = double.add_node(CLASS, "i-self")
    double.add_alloc(me, cpu_shares=1)

    engine = make_engine(url, nomad_self_node_id=me)
    nodes = [
        pool_node("cpu", "i-cpu"),
        pool_node("mem", "i-mem", nomad_node_id=busy_mem),
        pool_node("self", "i-self"),
        pool_node("ghost", "i-not-registered"),
    ]
    result = engine.load(LoadInput(nodes=nodes, config=config()))

    assert result.load == {"cpu": pytest.approx(0.75), "mem": pytest.approx(0.10)}
    assert len(result.events) == 1
    assert result.events[0].source == "nomad"
    # The least busy by CPU is the memory-heavy node.
    assert min(result.load, key=result.load.__getitem__) == "mem"


def test_load_counts_classless_nodes_as_chemtrail_default(
    nomad: tuple[NomadApiDouble, str],
) -> None:
    double, url = nomad
    nid = double.add_node("", "i-plain", cpu_shares=1000)
    double.add_alloc(nid, cpu_shares=250)
    cfg = PoolConfig(name="chemtrail-default", engine=Engine.NOMAD)
    result = make_engine(url).load(LoadInput(nodes=[pool_node("p", "i-plain")], config=cfg))
    assert result.load == {"p": pytest.approx(0.25)}


# ---- readiness --------------------------------------------------------------------


def test_ready_waits_for_the_instance_to_register(
    engine: NomadEngine, double: NomadApiDouble
) -> None:
    double.add_node(CLASS, "i-someone-else")
    nid = double.register_later(0.3, CLASS, "i-new", status="initializing")
    beats: list[object] = []

    started = time.monotonic()
    req = ReadyInput(node=pool_node("n9", "i-new"), config=config(), timeout_s=10)
    # Not ready until Nomad says the node is ready and eligible.
    flip = threading.Timer(0.6, double.set_node, args=(nid,), kwargs={"status": "ready"})
    flip.start()
    try:
        result = engine.ready(req, lambda *a: beats.append(a))
    finally:
        flip.cancel()

    assert time.monotonic() - started >= 0.6
    assert result.node.state == NodeState.READY
    assert result.node.attributes["nomad_node_id"] == nid
    assert result.node.id == "n9"
    assert [(e.message, e.source) for e in result.events] == [(f"node {nid} is ready", "nomad")]
    assert beats, "readiness heartbeats on each poll"


def test_ready_times_out_retryable(engine: NomadEngine, double: NomadApiDouble) -> None:
    nid = double.add_node(CLASS, "i-ineligible", eligibility="ineligible")
    req = ReadyInput(node=pool_node("n1", "i-ineligible"), config=config(), timeout_s=0.3)
    with pytest.raises(ApplicationError) as err:
        engine.ready(req, noop)
    assert err.value.non_retryable is False
    assert nid in str(err.value)


# ---- errors and auth ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_connection_refused_is_retryable() -> None:
    engine = make_engine(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ApplicationError) as err:
        engine.load(LoadInput(nodes=[pool_node("n1", "i-a")], config=config()))
    assert err.value.non_retryable is False
    assert err.value.details == ({"source": "nomad"},)
    with pytest.raises(ApplicationError) as err:
        engine.drain(
            DrainInput(node=pool_node("n1", "i-a"), config=config(), deadline_ns=deadline_in(5)),
            noop,
        )
    assert err.value.non_retryable is False


def test_server_error_is_retryable(engine: NomadEngine, double: NomadApiDouble) -> None:
    double.add_node(CLASS, "i-a")
    double.fail_next(500)
    with pytest.raises(ApplicationError) as err:
        engine.load(LoadInput(nodes=[pool_node("n1", "i-a")], config=config()))
    assert err.value.non_retryable is False
    assert "500" in str(err.value)


def test_token_is_sent_and_refusal_is_fatal() -> None:
    with nomad_double(required_token="s3cret") as (double, url):
        nid = double.add_node(CLASS, "i-a", cpu_shares=1000)
        double.add_alloc(nid, cpu_shares=500)
        node = pool_node("n1", "i-a")
        with_token = make_engine(url, nomad_token="s3cret")
        assert with_token.load(LoadInput(nodes=[node], config=config())).load == {"n1": 0.5}

        without = make_engine(url)
        with pytest.raises(ApplicationError) as err:
            without.load(LoadInput(nodes=[node], config=config()))
        assert err.value.non_retryable is True
        assert "403" in str(err.value)
