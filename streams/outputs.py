"""Output records, handed to Kafka one batch per partition instead of one by one.

Profiled (``python -m bench --profile``): aiokafka's per-record ``send()`` was the
largest single cost of the pipeline, 35-40% of a worker's samples with gateway batches.
Every record paid a coroutine, a future, a Python murmur2 and, at the checkpoint, a
``gather`` callback and a ``set_result``. Here a record costs a list append; at a flush
the records are appended to one ``BatchBuilder`` per partition (aiokafka's C record
builder) and each builder goes out with ``send_batch``: one future per partition and
flush, which the checkpoint awaits before it acknowledges the input.

No faust here: the producer is any aiokafka ``AIOKafkaProducer`` (faust's own, or the
worker's transactional one: a builder must come from the producer that sends it, as it
carries the transactional flag).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from streams.stages.routing import key_partition

# Outputs leave at most OUTPUT_LINGER_S after the first of them, in batches of up to
# OUTPUT_BATCH_BYTES per partition (under the broker's default message.max.bytes, 1 MiB);
# producers using Outputs are made with these.
OUTPUT_LINGER_S = 0.005
OUTPUT_BATCH_BYTES = 512 * 1024
OUTPUT_REQUEST_BYTES = 4 * 1024 * 1024

# Partitions of keys seen, per partition count: device-keyed records come with their
# owner's partition (see Outputs.add), other keys (districts) are few; cleared when it
# grows past this anyway.
_CACHE_MAX = 262_144


class Producer(Protocol):
    def create_batch(self) -> Any: ...

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> Any: ...

    async def partitions_for(self, topic: str) -> set[int]: ...


Record = tuple[bytes | None, bytes | None, int | None]  # key, value, partition


class Outputs:
    """Records waiting for the next flush, per topic, in the order they were added
    (Kafka keeps that order per partition)."""

    def __init__(self, owner_partitions: int | None = None) -> None:
        self.owner_partitions = owner_partitions
        self.records: dict[str, list[Record]] = {}
        self._partitions: dict[str, int] = {}  # partition count per topic
        self._owner_topics: set[str] = set()  # ... of those, with owner_partitions
        self._cache: dict[int, dict[bytes, int]] = {}
        self._round_robin = 0

    def add(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None = None,
        owner: int | None = None,
    ) -> None:
        """``owner``: the partition ``key`` has with ``owner_partitions`` partitions (a
        device's, known to the caller); it is the record's partition once ``topic`` is
        known to have that many, which saves hashing it or caching a copy of ``key``."""
        if partition is None and owner is not None and topic in self._owner_topics:
            partition = owner
        records = self.records.get(topic)
        if records is None:
            records = self.records[topic] = []
        records.append((key, value, partition))

    def __bool__(self) -> bool:
        return bool(self.records)

    def take(self) -> dict[str, list[Record]]:
        """Everything added so far, for one flush; the buffer starts empty again."""
        taken, self.records = self.records, {}
        return taken

    async def flush(
        self, producer: Producer, taken: dict[str, list[Record]]
    ) -> list[Awaitable[Any]]:
        """Hand ``taken`` to ``producer``; returns one future per batch, done when Kafka
        has acknowledged it."""
        futures: list[Awaitable[Any]] = []
        for topic, records in taken.items():
            count = self._partitions.get(topic)
            if count is None:
                count = self._partitions[topic] = len(await producer.partitions_for(topic))
                if count == self.owner_partitions:
                    self._owner_topics.add(topic)
            builders: dict[int, Any] = {}
            full: list[tuple[int, Any]] = []
            for key, value, partition in records:
                if partition is None:
                    partition = self._partition(key, count)
                builder = builders.get(partition)
                if builder is None:
                    builder = builders[partition] = producer.create_batch()
                if builder.append(timestamp=None, key=key, value=value) is None:
                    full.append((partition, builder))
                    builder = builders[partition] = producer.create_batch()
                    # (an empty builder takes one record of any size, as Kafka's own
                    # producer does: the broker's message.max.bytes is the limit)
                    if builder.append(timestamp=None, key=key, value=value) is None:
                        raise ValueError(f"{topic}: a record an empty batch refuses")
            full.extend(builders.items())
            for partition, builder in full:
                # Closed: ready at once (the producer would otherwise linger on a batch
                # of ours too, on top of OUTPUT_LINGER_S).
                builder.close()
                futures.append(await producer.send_batch(builder, topic, partition=partition))
        return futures

    def _partition(self, key: bytes | None, count: int) -> int:
        if key is None:  # (no output of ours is unkeyed without a partition: spread them)
            self._round_robin = (self._round_robin + 1) % count
            return self._round_robin
        cache = self._cache.get(count)
        if cache is None:
            cache = self._cache[count] = {}
        partition = cache.get(key)
        if partition is None:
            if len(cache) >= _CACHE_MAX:
                cache.clear()
            partition = cache[key] = key_partition(key, count)
        return partition


class Linger:
    """Calls ``flush`` once, ``delay_s`` after the first record since the last call:
    outputs leave within that delay even when no checkpoint is due."""

    def __init__(self, delay_s: float, flush: Callable[[], Awaitable[None]]) -> None:
        self.delay_s = delay_s
        self._flush = flush
        self._handle: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def arm(self) -> None:
        if self._handle is None:
            self._handle = asyncio.get_running_loop().call_later(self.delay_s, self._fire)

    def _fire(self) -> None:
        self._handle = None
        task = asyncio.ensure_future(self._flush())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
