"""Q, Quix Streams: the floor's work (bench/floor.py) written the idiomatic Quix way.

bytes -> ``streams.stages.validate.parse_message`` -> one row per reading (``apply(expand=True)``)
-> event time from the reading's ``ts`` -> ``group_by`` device, through Kafka (a
``repartition__`` topic, as Quix does it; gateway batches need it, single readings go
the same way) -> 60 s tumbling windows, 10 s grace, per metric count/min/max/sum/last
(``reduce``) -> closed windows only (``final()``) -> OUT.

Quix's defaults are kept, as its users run it: window state in RocksDB (its state dir
in a temp dir here, removed at the end) backed by a changelog topic, at-least-once,
commits every 5 s. Quix makes its own topics (repartition, changelog, OUT) with its
admin client, so the broker needs no auto-create.

Run by ``bench`` with the Quix venv's python (bench/quixenv.py), ``PYTHONPATH`` the
repo root: ``python -m bench.quix BROKER GROUP TOPIC OUT`` (not ``bench/quix.py``:
that would put bench/ first on sys.path, and bench/profile.py would shadow the stdlib
module). It exits once every record that was in TOPIC when it started has been
processed and every reading from them has come back through the repartition topic and
been windowed; its last log line counts the closed windows and the late readings
dropped (Quix drops a reading whose window has closed; the floor reopens the window).
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition  # type: ignore[import-not-found]
from quixstreams import Application  # type: ignore[import-not-found]

from bench.aggregate import GRACE, LIMITS, WINDOW, Aggregate, fold
from streams.stages.validate import parse_message

log = logging.getLogger("bench.quix")


def end_offsets(broker: str, topic: str) -> dict[int, int]:
    """The end offset of each partition of ``topic`` now (what is to be drained)."""
    consumer = Consumer({"bootstrap.servers": broker, "group.id": "bench-quix-ends"})
    try:
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        ends: dict[int, int] = {}
        for p in partitions:
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
            ends[p] = int(high)
        return ends
    finally:
        consumer.close()


def initializer(reading: dict[str, Any]) -> Aggregate:
    return fold({}, reading["metrics"])


def reducer(agg: Aggregate, reading: dict[str, Any]) -> Aggregate:
    return fold(agg, reading["metrics"])


class Drain:
    """Counts what has been processed and stops the app once it is all done: every
    input record up to the end offsets, and as many repartitioned readings as the
    input held (each valid reading goes through the repartition topic once)."""

    def __init__(self, topic: str, ends: dict[int, int]) -> None:
        self.app: Any = None
        self.topic = topic
        self.ends = ends
        self.pending = {p for p, end in ends.items() if end > 0}
        self.readings = 0  # expanded from the input
        self.regrouped = 0  # processed from the repartition topic
        self.rejected = 0
        self.late = 0
        self.windows = 0  # closed windows sent to OUT

    def expand(self, value: bytes) -> list[dict[str, Any]]:
        readings, rejects, _ = parse_message(value, 0, LIMITS)
        self.readings += len(readings)
        self.rejected += len(rejects)
        return [{"device_id": r.device_id, "ts": r.ts, "metrics": r.metrics} for r in readings]

    def on_late(self, *_: Any) -> bool:
        self.late += 1
        return False  # counted, not logged one by one

    def closed(self, _: Any) -> None:
        self.windows += 1

    def processed(self, topic: str, partition: int, offset: int) -> None:
        if topic == self.topic:
            if partition in self.pending and offset + 1 >= self.ends[partition]:
                self.pending.discard(partition)
        else:
            self.regrouped += 1
        if not self.pending and self.regrouped >= self.readings:
            self.app.stop()


def main(broker: str, group: str, topic: str, out: str) -> None:
    start = time.monotonic()
    ends = end_offsets(broker, topic)
    drain = Drain(topic, ends)
    if not drain.pending:
        log.info("%s is empty: nothing to do", topic)
        return
    state = Path(tempfile.mkdtemp(prefix="bench-quix-state-"))
    try:
        app = Application(
            broker_address=broker,
            consumer_group=group,
            auto_offset_reset="earliest",
            state_dir=state,
            on_message_processed=drain.processed,
            loglevel="WARNING",
        )
        drain.app = app
        source = app.topic(topic, key_deserializer="bytes", value_deserializer="bytes")
        sink = app.topic(out, key_serializer="str", value_serializer="json")
        sdf = app.dataframe(source)
        sdf = sdf.apply(drain.expand, expand=True)
        sdf = sdf.set_timestamp(lambda value, key, timestamp, headers: value["ts"])
        sdf = sdf.group_by(
            "device_id",
            key_serializer="str",
            key_deserializer="str",
        )
        sdf = (
            sdf.tumbling_window(duration_ms=WINDOW, grace_ms=GRACE, on_late=drain.on_late)
            .reduce(reducer=reducer, initializer=initializer)
            .final()
        )
        sdf = sdf.update(drain.closed)
        sdf.to_topic(sink)
        app.run()
    finally:
        shutil.rmtree(state, ignore_errors=True)
    log.info(
        "%d messages, %d readings (%d rejected, %d late), %d closed windows to %s in %.1f s",
        sum(ends.values()),
        drain.readings,
        drain.rejected,
        drain.late,
        drain.windows,
        out,
        time.monotonic() - start,
    )


if __name__ == "__main__":
    logging.basicConfig(level="INFO", format="%(asctime)s %(name)s %(message)s")
    main(*sys.argv[1:5])
