"""Failure reports, the quorum and TTL that turn them into failures, and the resource check.

A proxy counts as failed once ``failure_quorum`` distinct reporters have reported
it within ``failure_ttl`` seconds. Time is passed in as ``now`` (seconds since the
epoch) so this stays pure; a workflow passes ``workflow.now()``.
"""

from __future__ import annotations

from scaleflow.core.broker.epochs import bump
from scaleflow.core.broker.errors import BrokerError, BrokerErrorCode
from scaleflow.core.broker.failover import replace_failed_proxy
from scaleflow.core.broker.models import BrokerConfig, BrokerMeta


def add_failure(meta: BrokerMeta, proxy_address: str, reporter_id: str, now: float) -> BrokerMeta:
    """Record a report; a reporter's repeat within the TTL changes nothing.

    The first report's time is kept (as undermoon), so a stale report expires even
    while its reporter keeps repeating it, and is then recorded afresh.
    """
    if reporter_id in meta.failures.get(proxy_address, {}):
        return meta
    out = meta.model_copy(deep=True)
    out.failures.setdefault(proxy_address, {})[reporter_id] = now
    bump(out)
    return out


def _live(meta: BrokerMeta, now: float, ttl: float) -> dict[str, dict[str, float]]:
    live = {
        proxy: {r: t for r, t in reports.items() if now - t < ttl}
        for proxy, reports in meta.failures.items()
    }
    return {proxy: reports for proxy, reports in live.items() if reports}


def prune_failures(meta: BrokerMeta, now: float, config: BrokerConfig) -> BrokerMeta:
    """Drop the reports older than ``failure_ttl``."""
    live = _live(meta, now, config.failure_ttl)
    if live == meta.failures:
        return meta
    out = meta.model_copy(deep=True)
    out.failures = live
    bump(out)
    return out


def failed_proxies(meta: BrokerMeta, now: float, config: BrokerConfig) -> list[str]:
    """Known proxies with a quorum of live reports that still need a failover.

    A proxy already failed and out of its cluster needs nothing more; one still in
    its cluster (no free proxy replaced it yet) is listed again so it is retried.
    """
    failed = set(meta.failed_proxies)
    out = []
    for proxy, reports in _live(meta, now, config.failure_ttl).items():
        known = meta.all_proxies.get(proxy)
        if known is None or len(reports) < config.failure_quorum:
            continue
        if proxy in failed and known.cluster is None:
            continue
        out.append(proxy)
    return sorted(out)


def hosts_cannot_fail(meta: BrokerMeta) -> list[str]:
    """``POST /api/v2/resources/failures/check``: hosts whose loss could not be repaired.

    For each host, fail all its proxies one by one on a copy of the metadata; if
    some failed proxy finds no free replacement, that host cannot fail.
    """
    hosts: dict[str, list[str]] = {}
    for address, proxy in sorted(meta.all_proxies.items()):
        hosts.setdefault(proxy.host, []).append(address)
    out = []
    for host, proxies in sorted(hosts.items()):
        trial = meta
        try:
            for address in proxies:
                trial = replace_failed_proxy(trial, address)
        except BrokerError as err:
            if err.code is not BrokerErrorCode.NO_AVAILABLE_RESOURCE:
                raise
            out.append(host)
    return out
