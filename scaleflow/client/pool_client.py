"""``PoolClient``: routes each key to the node that owns its slot.

The map is polled: before an operation, a map older than ``refresh_s`` is re-read
(a 304 when unchanged), and it is re-read at once when a node stops answering.
Migrations wait twice the pool's ``client_refresh_s`` before copying and before
purging, so a client refreshing at least that often never uses a stale map.

While a range moves, writes go to the target, reads try the target and then the
source, and deletes go to both (as mcrouter's WarmUpRoute does), so no key is
missed during a resize. ``get_many`` sends its request to every node of the batch
before reading any reply, so the nodes work at once (a batch over two nodes costs
about what it costs on one). One ``PoolClient`` per thread: pymemcache clients are
not thread-safe.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import httpx
from pymemcache.client.base import Client, check_key_helper
from pymemcache.serde import LegacyWrappingSerde

from scaleflow.client.sources import HttpSlotMapSource, SlotMapSource
from scaleflow.client.wire import MultiGet
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
        # What pymemcache does with a value and its flags, for the pipelined multi-get.
        self._decoder = serde or LegacyWrappingSerde(None, None)
        self._clients: dict[str, Client] = {}
        self._readers: dict[str, MultiGet] = {}
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
        live = set(fresh.addresses.values())
        for conns in (self._clients, self._readers):
            for address in [a for a in conns if a not in live]:
                conns.pop(address).close()

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
                # Wait for each write's reply: a read on the multi-get connection then
                # sees it, and set_many can name the keys it failed to store.
                default_noreply=False,
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
            # Checked as pymemcache checks them: a key can't break the request line.
            asked = {check_key_helper(k, False): k for k in keys}
            first: dict[str, list[bytes]] = defaultdict(list)
            source_of: dict[bytes, str] = {}  # keys of moving ranges: where to look next
            for raw in asked:
                primary, fallback = self.route(raw)
                first[primary].append(raw)
                if fallback is not None:
                    source_of[raw] = fallback
            found = self._fetch(first)
            then: dict[str, list[bytes]] = defaultdict(list)
            for raw, fallback in source_of.items():
                if raw not in found:
                    then[fallback].append(raw)
            if then:
                found.update(self._fetch(then))
            return {
                asked[k]: self._decoder.deserialize(asked[k], value, flags)
                for k, (flags, value) in found.items()
            }

        return self._call(run)

    def _fetch(self, by_node: dict[str, list[bytes]]) -> dict[bytes, tuple[int, bytes]]:
        """Every node's request goes out before any reply is read."""
        used: dict[str, MultiGet] = {}
        try:
            for node, batch in by_node.items():
                address = self.map.addresses[node]
                used[address] = self._reader(address)
                used[address].send(batch)
            return {
                key: (flags, value)
                for reader in used.values()
                for key, flags, value in reader.receive()
            }
        except (OSError, ValueError) as exc:
            # Replies may be left unread on these connections: start them afresh.
            for address in used:
                self._readers.pop(address).close()
            raise OSError(f"multi-get failed: {exc}") from exc

    def _reader(self, address: str) -> MultiGet:
        reader = self._readers.get(address)
        if reader is None:
            reader = self._readers[address] = MultiGet(address, self.timeout_s)
        return reader

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
        for conns in (self._clients, self._readers):
            for conn in conns.values():
                conn.close()
            conns.clear()
        closer = getattr(self.source, "close", None)
        if closer is not None:
            closer()
