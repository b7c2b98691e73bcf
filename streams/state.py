"""Durable per-key state that costs a dict lookup per reading, not a changelog write.

A faust ``Table`` written per update sends one changelog message each time (~35-80 us).
:class:`DurableMap` keeps decoded values in a plain dict, remembers which keys changed,
and encodes each changed key once per checkpoint (see ``streams.pipeline``: state is
written and acknowledged before the input offsets it stands for are committed).

The changelog is our own compacted topic, not a faust table's: faust's table recovery
resumes the input partitions while its fetcher is still delivering, and messages fetched
in that moment were dropped (measured: about half of the first 300 messages of each
partition after a restart, see the windows issue). Without tables faust resumes input
only after seeking it, and the pipeline loads this state itself (:func:`load_partitions`)
before its agents touch a message of the new assignment.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, NamedTuple, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.security import client_kwargs
from streams.settings import Settings

log = logging.getLogger(__name__)

V = TypeVar("V")
Records = list[tuple[bytes, bytes | None]]  # (key, value) of a changelog, oldest first


class Write(NamedTuple):
    """One changelog record to send: the caller sends it and waits for the ack."""

    sink: Any  # where to send it (a faust topic in the pipeline)
    partition: int
    key: bytes
    value: bytes | None


class DurableMap(Generic[V]):
    """Per-key state of the partitions this worker owns, with its changelog topic."""

    def __init__(
        self,
        topic: str,
        encode: Callable[[V], bytes],
        decode: Callable[[bytes], V],
        sink: Any = None,
    ) -> None:
        self.topic = topic
        self.encode = encode
        self.decode = decode
        self.sink = sink
        self.stored: dict[bytes, bytes] = {}  # what the changelog holds, encoded
        self.partition_of: dict[bytes, int] = {}
        self.live: dict[str, V] = {}  # decoded, possibly newer than `stored`
        # key -> partition of the changelog it belongs to (the key's input partition)
        self.dirty: dict[str, int] = {}

    def get(self, key: str) -> V | None:
        value = self.live.get(key)
        if value is not None:
            return value
        raw = self.stored.get(key.encode())
        if raw is None:
            return None
        value = self.decode(raw)
        self.live[key] = value
        return value

    def set(self, key: str, value: V, partition: int) -> None:
        self.live[key] = value
        self.dirty[key] = partition

    def items(self) -> Iterator[tuple[str, V]]:
        """Every key this worker holds, decoded (loads the whole store: not a hot path)."""
        for raw_key in list(self.stored):
            key = raw_key.decode()
            value = self.get(key)
            if value is not None:
                yield key, value

    def collect(self, keys: Iterable[str] | None = None) -> list[Write]:
        """Encode the changed keys (all, or just ``keys``) and return the changelog
        records to send. Synchronous: the caller snapshots state and the events it
        stands for at one instant, then awaits the sends."""
        if keys is None:
            dirty, self.dirty = self.dirty, {}
        else:
            dirty = {k: p for k in keys if (p := self.dirty.pop(k, None)) is not None}
        writes: list[Write] = []
        for key, partition in dirty.items():
            raw_key = key.encode()
            raw = self.encode(self.live[key])
            self.stored[raw_key] = raw
            self.partition_of[raw_key] = partition
            writes.append(Write(self.sink, partition, raw_key, raw))
        return writes

    def replace(self, partitions: dict[int, Records]) -> None:
        """Hold exactly these partitions, with these changelog records (oldest first).

        Everything else is dropped, decoded copies included: after a rebalance the
        changelog is the truth (another worker may have owned a partition meanwhile).
        Call it only after a checkpoint, with nothing dirty."""
        if self.dirty:
            log.warning("%s: %d unwritten keys dropped", self.topic, len(self.dirty))
        self.stored.clear()
        self.partition_of.clear()
        self.live.clear()
        self.dirty.clear()
        for partition, records in partitions.items():
            for key, value in records:
                if value is None:  # a tombstone
                    self.stored.pop(key, None)
                    self.partition_of.pop(key, None)
                else:
                    self.stored[key] = value
                    self.partition_of[key] = partition

    def __len__(self) -> int:
        return len(self.stored)


async def read_to_end(
    consumer: AIOKafkaConsumer,
    tps: list[TopicPartition],
    apply: Callable[[TopicPartition, list[Any]], None],
) -> None:
    """Read ``tps`` (already assigned to ``consumer``) from the beginning to their end
    offsets as of now, handing each batch to ``apply``."""
    await consumer.seek_to_beginning(*tps)
    end = await consumer.end_offsets(tps)
    # Compaction can leave the end offset past the last record: compare positions.
    while [tp for tp in tps if await consumer.position(tp) < end[tp]]:
        batch = await consumer.getmany(*tps, timeout_ms=500, max_records=10_000)
        for tp, records in batch.items():
            apply(tp, records)


async def load_partitions(
    settings: Settings, topic: str, partitions: Iterable[int]
) -> dict[int, Records]:
    """The records of ``topic``'s ``partitions``, read whole by a consumer of no group
    (connecting as ``settings`` say: TLS, SCRAM)."""
    wanted = sorted(set(partitions))
    out: dict[int, Records] = {p: [] for p in wanted}
    if not wanted:
        return out
    consumer = AIOKafkaConsumer(
        **client_kwargs(settings),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        # Exactly-once: state of a transaction that was aborted (a worker killed
        # mid-checkpoint) is not state. Without transactions this reads the same.
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in wanted]
        consumer.assign(tps)

        def apply(tp: TopicPartition, records: list[Any]) -> None:
            out[tp.partition].extend((r.key, r.value) for r in records if r.key is not None)

        await read_to_end(consumer, tps, apply)
    finally:
        await consumer.stop()
    return out
