"""B0, the floor: aiokafka getmany -> orjson -> validate -> dict tumbling windows ->
produce. What a hand-written Python pipeline without a framework costs per reading.

Run as a process by ``bench``: ``python -m bench.floor BROKER GROUP TOPIC OUT``; exits
once it has read every record that was in TOPIC when it started.
"""

from __future__ import annotations

import asyncio
import sys

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench.aggregate import LIMITS, WINDOW, fold
from streams.stages.validate import parse_message


async def main(broker: str, group: str, topic: str, out: str) -> None:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=broker,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=4 << 20,
    )
    producer = AIOKafkaProducer(bootstrap_servers=broker, linger_ms=20)
    await consumer.start()
    await producer.start()
    try:
        while not consumer.assignment():  # noqa: ASYNC110 - aiokafka has no event for it
            await asyncio.sleep(0.05)
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        end = await consumer.end_offsets(tps)
        remaining = {tp for tp in tps if end[tp] > 0}
        windows: dict[str, dict[int, dict[str, list[float]]]] = {}
        high: dict[str, int] = {}
        while remaining:
            batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
            for tp, records in batch.items():
                for record in records:
                    readings, _, _ = parse_message(record.value, 0, LIMITS)
                    for r in readings:
                        start = r.ts - r.ts % WINDOW
                        device = windows.setdefault(r.device_id, {})
                        fold(device.setdefault(start, {}), r.metrics)
                        if r.ts > high.get(r.device_id, 0):
                            high[r.device_id] = r.ts
                            for old in [s for s in device if s + WINDOW <= r.ts - 10_000]:
                                aggs = device.pop(old)
                                await producer.send(
                                    out,
                                    orjson.dumps([r.device_id, old, aggs]),
                                    key=r.device_id.encode(),
                                )
                if records and records[-1].offset + 1 >= end[tp]:
                    remaining.discard(tp)
            await consumer.commit()
        await producer.flush()
    finally:
        await consumer.stop()
        await producer.stop()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
