"""Which partition owns a device: the same murmur2 rule as Kafka's default partitioner.

Per-device state (duplicates, windows) must live with one owner. A reading keyed by
its own device_id already arrives on its device's partition; a gateway batch mixes
devices, so readings whose device belongs elsewhere are forwarded to that partition.
"""

from __future__ import annotations

from functools import lru_cache

from aiokafka.partitioner import murmur2


@lru_cache(maxsize=262_144)  # bounded: device ids come from outside
def device_partition(device_id: str, partitions: int) -> int:
    return int((murmur2(device_id.encode("utf-8")) & 0x7FFFFFFF) % partitions)
