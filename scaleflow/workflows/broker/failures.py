"""Failure detection: what the entity pings, how a reading becomes failure reports, and
which failed proxies get a failover now. Pure code over ``BrokerState``; quorum and TTL
are ``core.broker.failures``'."""

from __future__ import annotations

from scaleflow.core.broker import failures
from scaleflow.core.broker.activity_io import PingNodesResult
from scaleflow.core.broker.models import BrokerMeta
from scaleflow.workflows.broker.planning import BrokerState, failover_would_change

# A failover that found nothing to do (no free proxy) is tried again after this long.
FAILOVER_RETRY_S = 30.0


def reporter_id(broker: str) -> str:
    """The entity's own name as a failure reporter (undermoon's coordinators have one each)."""
    return f"scaleflow-broker/{broker}"


def ping_targets(meta: BrokerMeta) -> list[str]:
    """Every node of every proxy, except those of failed proxies already out of use."""
    failed = set(meta.failed_proxies)
    return [
        node
        for address, proxy in sorted(meta.all_proxies.items())
        if not (address in failed and proxy.cluster is None)
        for node in proxy.node_addresses
    ]


def record_reading(
    meta: BrokerMeta, reading: PingNodesResult, reporter: str, now: float
) -> BrokerMeta:
    """A report for each proxy with a node that did not answer (a proxy is two nodes)."""
    dead = set(reading.dead)
    for address, proxy in sorted(meta.all_proxies.items()):
        if dead & set(proxy.node_addresses):
            meta = failures.add_failure(meta, address, reporter, now)
    return meta


def due_failovers(
    state: BrokerState, now: float, in_flight: set[str], retry_after: dict[str, float]
) -> list[str]:
    """Failed proxies (quorum of live reports) whose failover should be queued now."""
    out = []
    for address in failures.failed_proxies(state.meta, now, state.config):
        if address in in_flight or retry_after.get(address, 0.0) > now:
            continue
        out.append(address)
    return out


def worth_failing_over(state: BrokerState, address: str) -> bool:
    return failover_would_change(state, address)
