"""Failover: the peer replica takes over, then a free proxy replaces the failed one.

Within a chunk the peer of node i is node 3 - i, on the other proxy, so a failed
proxy's masters always have their replica on the surviving proxy. ``balance_masters``
later moves each master back to its home node once both proxies are healthy.
"""

from __future__ import annotations

from pydantic import BaseModel

from scaleflow.core.broker.allocation import pick_replacement
from scaleflow.core.broker.chunks import (
    chunk_count,
    chunk_proxies,
    get_cluster,
    home_index,
    master_index,
    peer_index,
)
from scaleflow.core.broker.epochs import bump
from scaleflow.core.broker.errors import BrokerError, BrokerErrorCode
from scaleflow.core.broker.models import (
    CHUNK_NODES,
    BrokerMeta,
    Cluster,
    ReplPeer,
    Role,
)


class FailoverResult(BaseModel):
    meta: BrokerMeta
    # The free proxy that took the failed one's place; None when none was free.
    replaced_by: str | None = None


def _move_master(cluster: Cluster, src: int, dst: int, epoch: int) -> None:
    """Make ``dst`` (the peer of ``src``) the master, with all of ``src``'s slots.

    Moves that involve the old master now involve the new one, at the new epoch: a
    Redis replica does not inherit MIGRATING/IMPORTING, so such a move restarts.
    """
    old, new = cluster.nodes[src], cluster.nodes[dst]
    new.slots, old.slots = old.slots, []
    new.repl.role, old.repl.role = Role.MASTER, Role.REPLICA
    for node in cluster.nodes:
        for entry in node.slots:
            move = entry.meta
            if move is None:
                continue
            if move.src_node_address == old.address:
                move.src_node_address, move.src_proxy_address = new.address, new.proxy_address
                move.epoch = epoch
            if move.dst_node_address == old.address:
                move.dst_node_address, move.dst_proxy_address = new.address, new.proxy_address
                move.epoch = epoch


def _locate(cluster: Cluster, proxy_address: str) -> tuple[int, int]:
    """(chunk, side) of a proxy: side 0 holds nodes 0-1, side 1 nodes 2-3."""
    for c in range(chunk_count(cluster)):
        sides = chunk_proxies(cluster, c)
        if proxy_address in sides:
            return c, sides.index(proxy_address)
    raise BrokerError(
        BrokerErrorCode.PROXY_NOT_FOUND, f"proxy {proxy_address} is not in {cluster.name}"
    )


def _mark_failed(meta: BrokerMeta, proxy_address: str) -> None:
    if proxy_address not in meta.failed_proxies:
        meta.failed_proxies = sorted([*meta.failed_proxies, proxy_address])


def takeover(meta: BrokerMeta, proxy_address: str) -> BrokerMeta:
    """Promote the peers of the failed proxy's masters; mark the proxy failed."""
    proxy = meta.all_proxies.get(proxy_address)
    if proxy is None:
        raise BrokerError(BrokerErrorCode.PROXY_NOT_FOUND, f"no proxy {proxy_address}")
    out = meta.model_copy(deep=True)
    _mark_failed(out, proxy_address)
    if proxy.cluster is None:
        # A free proxy only leaves the pool; its reports are settled.
        out.failures.pop(proxy_address, None)
        bump(out)
        return out
    epoch = bump(out, proxy.cluster)
    cluster = out.clusters[proxy.cluster]
    chunk, _ = _locate(cluster, proxy_address)
    for part in (0, 1):
        m = master_index(cluster, chunk, part)
        if cluster.nodes[m].proxy_address == proxy_address:
            _move_master(cluster, m, peer_index(m), epoch)
    return out


def replace_failed_proxy(meta: BrokerMeta, proxy_address: str) -> BrokerMeta:
    """Take over if not done yet, then put a free proxy's nodes in the failed one's place.

    The new nodes are replicas of the masters that took over.
    """
    out, _ = _replace(takeover(meta, proxy_address), proxy_address)
    return out


def failover(meta: BrokerMeta, proxy_address: str) -> FailoverResult:
    """Takeover, then replacement; without a free proxy the takeover still stands."""
    taken = takeover(meta, proxy_address)
    try:
        out, spare = _replace(taken, proxy_address)
    except BrokerError as err:
        if err.code is not BrokerErrorCode.NO_AVAILABLE_RESOURCE:
            raise
        return FailoverResult(meta=taken)
    return FailoverResult(meta=out, replaced_by=spare)


def _replace(taken: BrokerMeta, proxy_address: str) -> tuple[BrokerMeta, str | None]:
    name = taken.all_proxies[proxy_address].cluster
    if name is None:
        return taken, None
    out = taken.model_copy(deep=True)
    cluster = out.clusters[name]
    chunk, side = _locate(cluster, proxy_address)
    peer_proxy = chunk_proxies(cluster, chunk)[1 - side]
    spare = pick_replacement(
        out, out.all_proxies[proxy_address].host, out.all_proxies[peer_proxy].host
    )
    base = chunk * CHUNK_NODES + 2 * side
    for k in (0, 1):
        node = cluster.nodes[base + k]
        node.address = spare.node_addresses[k]
        node.proxy_address = spare.proxy_address
        cluster.nodes[peer_index(base + k)].repl.peers = [
            ReplPeer(node_address=node.address, proxy_address=node.proxy_address)
        ]
    out.all_proxies[proxy_address].cluster = None
    out.all_proxies[spare.proxy_address].cluster = name
    bump(out, name)
    return out, spare.proxy_address


def balance_masters(meta: BrokerMeta, name: str) -> BrokerMeta:
    """Move masters back to nodes 0 and 2 in every chunk with no failed proxy."""
    cluster = get_cluster(meta, name)
    suspect = set(meta.failed_proxies) | set(meta.failures)
    out = meta.model_copy(deep=True)
    epoch = bump(out, name)
    target = out.clusters[name]
    for c in range(chunk_count(cluster)):
        if suspect & set(chunk_proxies(cluster, c)):
            continue
        for part in (0, 1):
            m, home = master_index(target, c, part), home_index(c, part)
            if m != home:
                _move_master(target, m, home, epoch)
    return out
