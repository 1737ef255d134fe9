"""Which free proxies make new chunks, and which one replaces a failed proxy.

A chunk's two proxies sit on two different hosts, so losing one host never loses
both copies of a master's data. As undermoon: take the host with the most free
proxies, and pair it with the host it shares the fewest chunks with (ties: the one
with more free proxies). Ties left after that go by host name, so plans are
deterministic (undermoon's order there is a hash map's).
"""

from __future__ import annotations

from collections.abc import Mapping

from scaleflow.core.broker.chunks import chunk_count, chunk_proxies
from scaleflow.core.broker.errors import BrokerError, BrokerErrorCode
from scaleflow.core.broker.models import BrokerMeta, ProxyResource

LinkTable = dict[str, dict[str, int]]


def free_proxies(meta: BrokerMeta) -> list[ProxyResource]:
    """Proxies in no cluster, not failed, and with no failure report pending."""
    failed = set(meta.failed_proxies)
    return [
        p
        for addr, p in sorted(meta.all_proxies.items())
        if p.cluster is None and addr not in failed and addr not in meta.failures
    ]


def free_by_host(meta: BrokerMeta) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for p in free_proxies(meta):
        out.setdefault(p.host, []).append(p.proxy_address)
    return out


def link_table(meta: BrokerMeta) -> LinkTable:
    """host -> other host -> chunks spanning the two, over every cluster."""
    links: LinkTable = {}
    for cluster in meta.clusters.values():
        for c in range(chunk_count(cluster)):
            a, b = (meta.all_proxies[p].host for p in chunk_proxies(cluster, c))
            links.setdefault(a, {})[b] = links.get(a, {}).get(b, 0) + 1
            links.setdefault(b, {})[a] = links.get(b, {}).get(a, 0) + 1
    return links


def balanced_capacity(counts: Mapping[str, int]) -> int:
    """How many of these proxies can be paired across hosts.

    A host holding more than half of them can only pair with the others, so its
    surplus is unusable (undermoon trims it the same way).
    """
    total = sum(counts.values())
    biggest = max(counts.values(), default=0)
    return total if 2 * biggest <= total else 2 * (total - biggest)


def check_capacity(counts: Mapping[str, int], proxies: int) -> None:
    total = sum(counts.values())
    if total < proxies:
        raise BrokerError(
            BrokerErrorCode.NO_AVAILABLE_RESOURCE,
            f"{proxies} free proxies needed, {total} available",
        )
    if balanced_capacity(counts) < proxies:
        raise BrokerError(
            BrokerErrorCode.RESOURCE_NOT_BALANCE,
            f"{proxies} free proxies needed on at least two hosts; one host holds "
            f"{max(counts.values())} of the {total} free ones",
        )


def pair_hosts(
    free: Mapping[str, list[str]], links: Mapping[str, Mapping[str, int]], chunks: int
) -> list[tuple[str, str]]:
    """``chunks`` pairs of proxy addresses, each pair from two hosts.

    Taking the fullest host first keeps the rest pairable: whenever
    ``balanced_capacity`` allows ``2 * chunks`` proxies, this never gets stuck.
    """
    check_capacity({h: len(p) for h, p in free.items()}, 2 * chunks)
    left = {h: sorted(p) for h, p in free.items() if p}
    linked: dict[str, dict[str, int]] = {h: dict(v) for h, v in links.items()}
    pairs: list[tuple[str, str]] = []
    for _ in range(chunks):
        first = min(left, key=lambda h: (-len(left[h]), h))
        others = [h for h in left if h != first]
        if not others:  # unreachable once check_capacity passed; kept as a guard
            raise BrokerError(BrokerErrorCode.RESOURCE_NOT_BALANCE, "only one host has proxies")
        second = min(others, key=lambda h: (linked.get(first, {}).get(h, 0), -len(left[h]), h))
        pairs.append((left[first].pop(0), left[second].pop(0)))
        for a, b in ((first, second), (second, first)):
            linked.setdefault(a, {})[b] = linked.get(a, {}).get(b, 0) + 1
        left = {h: p for h, p in left.items() if p}
    return pairs


def allocate_chunks(meta: BrokerMeta, chunks: int) -> list[tuple[ProxyResource, ProxyResource]]:
    pairs = pair_hosts(free_by_host(meta), link_table(meta), chunks)
    return [(meta.all_proxies[a], meta.all_proxies[b]) for a, b in pairs]


def pick_replacement(meta: BrokerMeta, failed_host: str, peer_host: str) -> ProxyResource:
    """A free proxy for a chunk whose other proxy is on ``peer_host``.

    Never on the failed host, which may be down as a whole, nor on the peer's host,
    which would put both copies on one host (undermoon only avoids the failed host).
    """
    free = free_by_host(meta)
    links = link_table(meta).get(peer_host, {})
    hosts = [h for h in free if h not in (failed_host, peer_host)]
    if not hosts:
        raise BrokerError(
            BrokerErrorCode.NO_AVAILABLE_RESOURCE,
            f"no free proxy off hosts {failed_host} and {peer_host}",
        )
    host = min(hosts, key=lambda h: (links.get(h, 0), -len(free[h]), h))
    return meta.all_proxies[free[host][0]]
