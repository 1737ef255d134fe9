"""``PoolClient`` routing against real memcached nodes, with the slot map given directly."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheIllegalInputError

from scaleflow.activities.providers.local import LocalProvider
from scaleflow.client import PoolClient
from scaleflow.client.wire import split_address
from scaleflow.core.activity_io import ProvisionInput, TerminateInput
from scaleflow.core.models import Node, PoolConfig
from scaleflow.core.slots import SLOTS, MovingRange, SlotMap, SlotRange, slot_of

HALF = SLOTS // 2


class StaticSource:
    """The map a test sets; ``fetches`` counts the reads."""

    def __init__(self, slot_map: SlotMap) -> None:
        self.map = slot_map
        self.fetches = 0

    def fetch(self, known_epoch: int | None) -> SlotMap | None:
        self.fetches += 1
        return None if known_epoch == self.map.epoch else self.map


CONFIG = PoolConfig(name="client")


@pytest.fixture
def nodes(provider: LocalProvider) -> dict[str, Node]:
    out = {}
    for node_id in ("a", "b"):
        req = ProvisionInput(pool=CONFIG.name, node_id=node_id, config=CONFIG)
        out[node_id] = provider.provision(req).node
    return out


@pytest.fixture
def addresses(nodes: dict[str, Node]) -> dict[str, str]:
    return {node_id: node.address or "" for node_id, node in nodes.items()}


@pytest.fixture
def raw(addresses: dict[str, str]) -> Iterator[dict[str, Client]]:
    # Writes wait for their reply, so a read on another connection sees them.
    clients = {n: Client(split_address(a), default_noreply=False) for n, a in addresses.items()}
    yield clients
    for c in clients.values():
        c.close()


def connections(node: Client) -> int:
    return int(node.stats()[b"curr_connections"])


def split_map(addresses: dict[str, str], epoch: int = 1) -> SlotMap:
    return SlotMap(
        epoch=epoch,
        ranges=[
            SlotRange(start=0, end=HALF - 1, node="a"),
            SlotRange(start=HALF, end=SLOTS - 1, node="b"),
        ],
        addresses=addresses,
    )


def moving_map(addresses: dict[str, str], epoch: int = 2) -> SlotMap:
    """Every slot on ``a``; the upper half moving to ``b``."""
    return SlotMap(
        epoch=epoch,
        ranges=[SlotRange(start=0, end=SLOTS - 1, node="a")],
        moving=[MovingRange(start=HALF, end=SLOTS - 1, source="a", target="b", epoch=epoch)],
        addresses=addresses,
    )


def keys_by_half(n: int) -> tuple[list[str], list[str]]:
    low, high = [], []
    i = 0
    while len(low) < n or len(high) < n:
        key = f"k{i}"
        (low if slot_of(key) < HALF else high).append(key)
        i += 1
    return low[:n], high[:n]


def test_each_key_lands_on_the_node_that_owns_its_slot(addresses, raw) -> None:
    client = PoolClient(StaticSource(split_map(addresses)))
    low, high = keys_by_half(200)
    assert client.set_many({k: k.encode() for k in low + high}) == []
    assert raw["a"].get_many(low) == {k: k.encode() for k in low}
    assert raw["b"].get_many(high) == {k: k.encode() for k in high}
    assert not raw["a"].get_many(high) and not raw["b"].get_many(low)
    # One batch over both nodes: both requests go out before either reply is read.
    got = client.get_many([*low, *high, "absent"])
    assert got == {k: k.encode() for k in low + high}
    client.close()


def test_a_moving_range_reads_the_target_first_then_the_source(addresses, raw) -> None:
    _, high = keys_by_half(100)
    for k in high:
        raw["a"].set(k, b"old")
    newer = high[:10]
    for k in newer:
        raw["b"].set(k, b"new")  # a client wrote it to the target since the move began
    client = PoolClient(StaticSource(moving_map(addresses)))
    got = client.get_many(high)
    assert got == {k: (b"new" if k in newer else b"old") for k in high}
    assert client.get(newer[0]) == b"new" and client.get(high[-1]) == b"old"
    # Writes go to the target only; deletes reach both.
    client.set(high[-1], b"written")
    assert raw["b"].get(high[-1]) == b"written" and raw["a"].get(high[-1]) == b"old"
    client.delete(newer[0])
    assert raw["a"].get(newer[0]) is None and raw["b"].get(newer[0]) is None
    client.close()


def test_values_come_back_through_the_serde(addresses) -> None:
    class Json:
        def serialize(self, key, value):
            return json.dumps(value).encode(), 7

        def deserialize(self, key, value, flags):
            assert flags == 7
            return json.loads(value)

    client = PoolClient(StaticSource(split_map(addresses)), serde=Json())
    low, high = keys_by_half(3)
    values = {k: {"n": i} for i, k in enumerate(low + high)}
    client.set_many(values)
    assert client.get_many(list(values)) == values
    assert client.get_many([k.encode() for k in low]) == {k.encode(): values[k] for k in low}
    client.close()


def test_a_key_that_would_break_the_request_is_refused(addresses) -> None:
    client = PoolClient(StaticSource(split_map(addresses)))
    for bad in ("two words", "line\r\nflush_all", "x" * 251):
        with pytest.raises(MemcacheIllegalInputError):
            client.get_many(["fine", bad])
    client.close()


def test_a_node_that_leaves_the_map_loses_the_clients_connections(addresses, raw) -> None:
    source = StaticSource(split_map(addresses))
    client = PoolClient(source, refresh_s=0)
    low, high = keys_by_half(5)
    client.set_many({k: b"v" for k in low + high})
    client.get_many(low + high)
    before = connections(raw["b"])
    source.map = SlotMap(
        epoch=2,
        ranges=[SlotRange(start=0, end=SLOTS - 1, node="a")],
        addresses={"a": addresses["a"]},
    )
    client.get_many(low)  # refreshes first: b is gone from the map
    # The routing connection and the multi-get connection both close.
    deadline = time.monotonic() + 5
    while connections(raw["b"]) != before - 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert connections(raw["b"]) == before - 2
    client.close()


def test_a_node_that_stops_answering_makes_the_client_read_the_map_again(
    nodes, addresses, raw, provider
) -> None:
    source = StaticSource(split_map(addresses))
    client = PoolClient(source, refresh_s=3600)
    low, high = keys_by_half(5)
    client.set_many({k: b"v" for k in low + high})
    assert len(client.get_many(low + high)) == 10
    fetches = source.fetches
    # b dies; the map now says a owns everything (its keys moved there).
    provider.terminate(TerminateInput(pool=CONFIG.name, node=nodes["b"], config=CONFIG))
    source.map = SlotMap(
        epoch=2, ranges=[SlotRange(start=0, end=SLOTS - 1, node="a")], addresses=addresses
    )
    raw["a"].set_many({k: b"v" for k in high})
    assert len(client.get_many(low + high)) == 10
    assert source.fetches > fetches
    client.close()
