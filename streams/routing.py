"""Which partition owns a device: the same murmur2 rule as Kafka's default partitioner.

Per-device state (duplicates, windows) must live with one owner. A reading keyed by
its own device_id already arrives on its device's partition; a gateway batch mixes
devices, so readings whose device belongs elsewhere are forwarded to that partition.
"""

from __future__ import annotations

from functools import lru_cache

from aiokafka.partitioner import murmur2


def key_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives ``key``."""
    return int((murmur2(key) & 0x7FFFFFFF) % partitions)


@lru_cache(maxsize=262_144)  # bounded: device ids come from outside
def device_partition(device_id: str, partitions: int) -> int:
    return key_partition(device_id.encode("utf-8"), partitions)
