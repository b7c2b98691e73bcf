"""Followers: compacted topics read whole by every worker, then followed (the device
registry, and the latest occupancy values that rules compare against)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from aiokafka import TopicPartition

from streams.messages import OccupancyValues
from streams.runtime.changelogs import read_whole, whole_topic_consumer
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
        wait_s: float | None = None,
    ):
        self.settings = settings
        self.topic = topic
        self.apply = apply
        self.on_error = on_error
        self.after = after
        self.wait_s = wait_s  # for the topic to exist (None: as long as it takes)
        self.positions: dict[TopicPartition, int] = {}

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
        self.positions = await read_whole(self.settings, self.topic, self._apply, self.wait_s)

    async def follow(self) -> None:
        if not self.positions:
            return  # (the topic did not exist within wait_s: nothing to follow)
        consumer = whole_topic_consumer(self.settings)
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
