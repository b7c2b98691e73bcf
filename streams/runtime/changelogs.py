"""Reading compacted topics whole: a worker's state changelogs on assignment, and the
followed topics (registry, occupancy) at start."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.kafka.clients import client_kwargs
from streams.settings import Settings
from streams.state import Records


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
