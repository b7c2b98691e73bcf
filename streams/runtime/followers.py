"""Followers: compacted topics read whole by every worker, then followed (the device
registry, and the latest occupancy values that rules compare against)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.kafka.clients import client_kwargs
from streams.messages import OccupancyValues
from streams.runtime.changelogs import read_to_end
from streams.runtime.internals import refresh_metadata
from streams.settings import Settings

log = logging.getLogger(__name__)


def apply_latest(
    latest: dict[str, dict[str, float]], key: bytes | None, value: bytes | None
) -> str | None:
    """One record of the occupancy topic: a device's latest occupancy values."""
    if key is None:
        return "no key"
    if value is None:
        latest.pop(key.decode(errors="replace"), None)
        return None
    try:
        latest[key.decode()] = OccupancyValues.decode(value).values
    except (ValueError, UnicodeDecodeError) as exc:
        return f"unreadable: {exc}"
    return None


class Follower:
    """A compacted topic, read whole by every worker, then followed.

    A consumer without a group, assigned every partition: each worker needs every
    record, and nothing about this topic should be committed. :meth:`load` reads it to
    the end *before* the worker joins its group (telemetry never waits on, or is
    dead-lettered for, a registry still loading); :meth:`follow` applies what comes
    later. ``apply`` takes one record and returns a problem to log, or None.
    """

    def __init__(
        self,
        settings: Settings,
        topic: str,
        apply: Callable[[bytes | None, bytes | None], str | None],
        on_error: Callable[[], None] | None = None,
        after: Callable[[], None] | None = None,
    ):
        self.settings = settings
        self.topic = topic
        self.apply = apply
        self.on_error = on_error
        self.after = after
        self.positions: dict[TopicPartition, int] = {}

    def _consumer(self) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            **client_kwargs(self.settings),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",  # occupancy is written in transactions
        )

    def _apply(self, tp: TopicPartition, records: list[Any]) -> None:
        for record in records:
            problem = self.apply(record.key, record.value)
            if problem is not None:
                if self.on_error is not None:
                    self.on_error()
                log.warning(
                    "%s %d@%d ignored: %s", self.topic, tp.partition, record.offset, problem
                )
        if records:
            self.positions[tp] = records[-1].offset + 1
        if self.after is not None:
            self.after()

    async def load(self) -> None:
        consumer = self._consumer()
        await consumer.start()
        try:
            partitions: set[int] | None = None
            while not partitions:
                await refresh_metadata(consumer)
                partitions = consumer.partitions_for_topic(self.topic)
                if not partitions:
                    await asyncio.sleep(0.2)
            tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
            consumer.assign(tps)
            self.positions = {tp: 0 for tp in tps}
            await read_to_end(consumer, tps, self._apply)
            for tp in tps:
                self.positions[tp] = await consumer.position(tp)
        finally:
            await consumer.stop()

    async def follow(self) -> None:
        consumer = self._consumer()
        await consumer.start()
        try:
            consumer.assign(list(self.positions))
            for tp, offset in self.positions.items():
                consumer.seek(tp, offset)
            while True:
                batch = await consumer.getmany(timeout_ms=1000, max_records=10_000)
                for tp, records in batch.items():
                    self._apply(tp, records)
        finally:
            await consumer.stop()
