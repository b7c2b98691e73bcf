"""Reading compacted topics whole: a worker's state changelogs on assignment, and the
followed topics (registry, occupancy) at start."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.kafka.clients import client_kwargs
from streams.runtime.internals import refresh_metadata
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


def whole_topic_consumer(settings: Settings) -> AIOKafkaConsumer:
    """A consumer of no group that reads committed records from the beginning: for
    topics every reader needs whole, and nothing about which should be committed."""
    return AIOKafkaConsumer(
        **client_kwargs(settings),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        # Exactly-once: a record of an aborted transaction (a worker killed
        # mid-checkpoint) is not state. Without transactions this reads the same.
        isolation_level="read_committed",
    )


async def read_whole(
    settings: Settings,
    topic: str,
    apply: Callable[[TopicPartition, list[Any]], None],
    wait_s: float | None = None,
) -> dict[TopicPartition, int]:
    """Every record of every partition of ``topic``, up to its end as of now, to
    ``apply``; returns the positions reached (to follow it from there). A topic that
    does not exist yet is waited for: ``wait_s`` at most (None: until it does; then
    nothing is read and the positions are empty)."""
    consumer = whole_topic_consumer(settings)
    await consumer.start()
    try:
        loop = asyncio.get_running_loop()
        give_up = None if wait_s is None else loop.time() + wait_s
        while True:  # a topic just created takes a moment to show up in the metadata
            await refresh_metadata(consumer)
            partitions = consumer.partitions_for_topic(topic)
            if partitions:
                break
            if give_up is not None and loop.time() > give_up:
                return {}
            await asyncio.sleep(0.2)
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await read_to_end(consumer, tps, apply)
        return {tp: await consumer.position(tp) for tp in tps}
    finally:
        await consumer.stop()


async def load_partitions(
    settings: Settings, topic: str, partitions: Iterable[int]
) -> dict[int, Records]:
    """The records of ``topic``'s ``partitions``, read whole by a consumer of no group
    (connecting as ``settings`` say: TLS, SCRAM)."""
    wanted = sorted(set(partitions))
    out: dict[int, Records] = {p: [] for p in wanted}
    if not wanted:
        return out
    consumer = whole_topic_consumer(settings)
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
