"""The library applications use to reach a slot-partitioned memcached pool."""

from scaleflow.client.pool_client import PoolClient
from scaleflow.client.sources import HttpSlotMapSource, SlotMapSource

__all__ = ["HttpSlotMapSource", "PoolClient", "SlotMapSource"]
