"""``PoolClient``: routes each key to the node that owns its slot.

The map is polled: before an operation, a map older than ``refresh_s`` is re-read
(a 304 when unchanged), and it is re-read at once when a node stops answering.
Migrations wait twice the pool's ``client_refresh_s`` before copying and before
purging, so a client refreshing at least that often never uses a stale map.

While a range moves, writes go to the target, reads try the target and then the
source, and deletes go to both (as mcrouter's WarmUpRoute does), so no key is
missed during a resize. One ``PoolClient`` per thread: pymemcache clients are not
thread-safe.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import httpx
from pymemcache.client.base import Client

from scaleflow.client.sources import HttpSlotMapSource, SlotMapSource
from scaleflow.core.slots import SlotMap, slot_of


class PoolClient:
    def __init__(
        self,
        source: SlotMapSource,
        refresh_s: float = 0.5,
        timeout_s: float = 2.0,
        serde: Any = None,
    ) -> None:
        self.source = source
        self.refresh_s = refresh_s
        self.timeout_s = timeout_s
        self.serde = serde
        self._clients: dict[str, Client] = {}
        self.map = SlotMap()
        self._owners: list[str] = []
        self._checked = 0.0
        self.refresh()

    @classmethod
    def from_api(cls, api_url: str, pool: str, **kw: Any) -> PoolClient:
        return cls(HttpSlotMapSource(api_url, pool), **kw)

    # ---- the map -------------------------------------------------------------

    def refresh(self) -> None:
        fresh = self.source.fetch(self.map.epoch if self.map.ranges else None)
        self._checked = time.monotonic()
        if fresh is None or fresh.epoch < self.map.epoch:
            return
        self.map = fresh
        self._owners = fresh.table()
        # Let go of nodes that left the map, so their drain can finish.
        for address in list(self._clients):
            if address not in fresh.addresses.values():
                self._clients.pop(address).close()

    def _fresh(self) -> None:
        if time.monotonic() - self._checked >= self.refresh_s:
            try:
                self.refresh()
            except (httpx.HTTPError, OSError):
                # A periodic refresh that fails keeps the current map and the next one
                # retries, rather than failing the cache call; while the API stays
                # unreachable the map can age past a migration's grace period.
                self._checked = time.monotonic()
                if not self.map.ranges:
                    raise

    def _client(self, node: str) -> Client:
        address = self.map.addresses[node]
        client = self._clients.get(address)
        if client is None:
            host, _, port = address.rpartition(":")
            client = Client(
                (host, int(port)),
                connect_timeout=self.timeout_s,
                timeout=self.timeout_s,
                serde=self.serde,
            )
            self._clients[address] = client
        return client

    def route(self, key: str | bytes) -> tuple[str, str | None]:
        """The node to write (and read first), and the node to read on a miss."""
        slot = slot_of(key)
        moving = self.map.moving_for(slot)
        if moving is not None:
            return moving.target, moving.source
        if not self._owners:
            raise RuntimeError("the pool has no slot map yet")
        return self._owners[slot], None

    def _call(self, fn: Any) -> Any:
        self._fresh()
        try:
            return fn()
        except OSError:
            # A node that stopped answering may have left the pool: look again.
            self.refresh()
            return fn()

    # ---- the cache -----------------------------------------------------------

    def get(self, key: str | bytes) -> Any:
        def run() -> Any:
            primary, fallback = self.route(key)
            value = self._client(primary).get(key)
            if value is None and fallback is not None:
                value = self._client(fallback).get(key)
            return value

        return self._call(run)

    def set(self, key: str | bytes, value: Any, expire: int = 0) -> bool:
        return bool(self._call(lambda: self._client(self.route(key)[0]).set(key, value, expire)))

    def delete(self, key: str | bytes) -> None:
        def run() -> None:
            primary, fallback = self.route(key)
            self._client(primary).delete(key)
            if fallback is not None:
                self._client(fallback).delete(key)

        self._call(run)

    def get_many(self, keys: Iterable[str | bytes]) -> dict[Any, Any]:
        def run() -> dict[Any, Any]:
            groups: dict[tuple[str, str | None], list[str | bytes]] = defaultdict(list)
            for key in keys:
                groups[self.route(key)].append(key)
            found: dict[Any, Any] = {}
            for (primary, fallback), batch in groups.items():
                got = self._client(primary).get_many(batch)
                found.update(got)
                missed = [k for k in batch if k not in got]
                if fallback is not None and missed:
                    found.update(self._client(fallback).get_many(missed))
            return found

        return self._call(run)

    def set_many(self, values: dict[Any, Any], expire: int = 0) -> list[Any]:
        def run() -> list[Any]:
            groups: dict[str, dict[Any, Any]] = defaultdict(dict)
            for key, value in values.items():
                groups[self.route(key)[0]][key] = value
            failed: list[Any] = []
            for node, batch in groups.items():
                failed += self._client(node).set_many(batch, expire=expire)
            return failed

        return self._call(run)

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        closer = getattr(self.source, "close", None)
        if closer is not None:
            closer()
