"""Small aiokafka helpers for tests that talk to the real broker."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import ConsumerRecord


async def consume_records(
    broker: str,
    topic: str,
    want: int,
    timeout: float = 60.0,
    settle: float = 0.0,
    isolation_level: str = "read_committed",
) -> list[ConsumerRecord[bytes, bytes]]:
    """Read ``topic`` from the beginning until ``want`` records or ``timeout`` seconds;
    then keep reading for ``settle`` seconds more, to catch records that should not be there.
    Read committed, as downstream consumers do (exactly-once's outputs are transactional)."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=broker,
        auto_offset_reset="earliest",
        group_id=None,
        isolation_level=isolation_level,
    )
    return await read_records(consumer, want, timeout, settle)


async def read_records(
    consumer: AIOKafkaConsumer, want: int, timeout: float, settle: float = 0.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Start ``consumer``, read until ``want`` records or ``timeout`` seconds (then for
    ``settle`` seconds more), stop it."""
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:
        async with asyncio.timeout(timeout):
            while len(records) < want:
                batch = await consumer.getmany(timeout_ms=500)
                records += [m for msgs in batch.values() for m in msgs]
        if settle:
            loop = asyncio.get_running_loop()
            end = loop.time() + settle
            while loop.time() < end:
                batch = await consumer.getmany(timeout_ms=200)
                records += [m for msgs in batch.values() for m in msgs]
    except TimeoutError:
        pass
    finally:
        await consumer.stop()
    return records


async def consume(broker: str, topic: str, want: int, timeout: float = 60.0) -> list[bytes]:
    return [r.value for r in await consume_records(broker, topic, want, timeout) if r.value]


async def produce_messages(
    broker: str, topic: str, messages: Iterable[tuple[bytes | None, bytes | None]]
) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=broker, acks="all", linger_ms=5, max_request_size=2**20
    )
    await producer.start()
    try:
        for key, value in messages:
            await producer.send(topic, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


async def produce(broker: str, topic: str, values: list[bytes]) -> None:
    await produce_messages(broker, topic, ((str(i).encode(), v) for i, v in enumerate(values)))
