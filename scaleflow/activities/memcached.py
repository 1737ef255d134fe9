"""The memcached engine: readiness, load and drain read the node's own ``stats``."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheError, MemcacheUnexpectedCloseError

from scaleflow.activities.notes import note, retryable
from scaleflow.client.wire import split_address
from scaleflow.core.activity_io import (
    DrainInput,
    DrainResult,
    LoadInput,
    LoadResult,
    ReadyInput,
    ReadyResult,
)
from scaleflow.core.models import Node, NodeState
from scaleflow.core.settings import Settings

SOURCE = "memcached"
Heartbeat = Callable[..., None]


def node_client(address: str, timeout_s: float = 1.0) -> Client:
    return Client(split_address(address), connect_timeout=timeout_s, timeout=timeout_s)


def stats(address: str) -> dict[str, Any]:
    client = node_client(address)
    try:
        return {k.decode(): v for k, v in client.stats().items()}
    finally:
        client.close()


def client_connections(address: str) -> int:
    # curr_connections counts the connection asking, too.
    return max(0, int(stats(address)["curr_connections"]) - 1)


class MemcachedEngine:
    def __init__(self, settings: Settings) -> None:
        self.poll_s = settings.drain_poll_interval_s

    def ready(self, req: ReadyInput, heartbeat: Heartbeat) -> ReadyResult:
        addr = req.node.address or ""
        deadline = time.monotonic() + req.timeout_s
        last_error = "no address"
        while addr and time.monotonic() < deadline:
            try:
                client = node_client(addr, timeout_s=0.5)
                try:
                    version = client.version().decode()
                finally:
                    client.close()
                node = req.node.model_copy(update={"state": NodeState.READY})
                return ReadyResult(
                    node=node,
                    events=[
                        note(f"node {node.id} at {addr} answers (memcached {version})", SOURCE)
                    ],
                )
            except (OSError, ValueError, MemcacheError) as exc:
                last_error = str(exc) or type(exc).__name__
            heartbeat("waiting", addr)
            time.sleep(0.02)
        raise retryable(f"node {req.node.id} at {addr} did not answer: {last_error}", SOURCE)

    def load(self, req: LoadInput) -> LoadResult:
        load: dict[str, float] = {}
        for node in req.nodes:
            if not node.address:
                continue
            try:
                load[node.id] = float(client_connections(node.address))
            except (OSError, ValueError, KeyError, MemcacheError):
                # Not answering, or full of clients: either way not the least busy.
                continue
        summary = ", ".join(f"{k}={int(v)}" for k, v in sorted(load.items()))
        return LoadResult(
            load=load, events=[note(f"client connections per node: {summary or 'none'}", SOURCE)]
        )

    def drain(self, req: DrainInput, heartbeat: Heartbeat) -> DrainResult:
        node: Node = req.node
        addr = node.address or ""
        events = []
        first = req.first
        slice_end = time.monotonic() + req.slice_s
        while True:
            try:
                open_conns = client_connections(addr)
            except (OSError, ValueError, KeyError, MemcacheUnexpectedCloseError):
                if first:
                    events.append(note(f"draining node {node.id}", SOURCE))
                events.append(
                    note(f"node {node.id} at {addr} does not answer; nothing to drain", SOURCE)
                )
                events.append(note(f"drain complete for node {node.id}", SOURCE))
                return DrainResult(completed=True, events=events)
            except MemcacheError:
                # It refuses even a stats connection: still full of clients.
                open_conns = -1
            if first:
                # Every drain starts with the seed's "draining node X".
                events.append(note(f"draining node {node.id}: {_count(open_conns)} open", SOURCE))
                first = False
                if open_conns != 0:
                    # The first slice ends here, so the drain shows in the events at once.
                    return DrainResult(completed=False, remaining=open_conns, events=events)
            if open_conns == 0:
                events.append(note(f"all client connections on node {node.id} have closed", SOURCE))
                events.append(note(f"drain complete for node {node.id}", SOURCE))
                return DrainResult(completed=True, events=events)
            if req.deadline_ns == 0 or time.time_ns() >= req.deadline_ns:
                events.append(
                    note(
                        f"drain deadline reached for node {node.id}: {_count(open_conns)} left",
                        SOURCE,
                    )
                )
                return DrainResult(completed=False, remaining=open_conns, events=events)
            if time.monotonic() >= slice_end:
                return DrainResult(completed=False, remaining=open_conns, events=events)
            heartbeat({"open": open_conns})
            time.sleep(self.poll_s)


def _count(open_conns: int) -> str:
    if open_conns < 0:
        return "more client connections than it accepts"
    if open_conns == 0:
        return "no client connections"
    return f"{open_conns} client connections"
