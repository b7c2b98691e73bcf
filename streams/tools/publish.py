"""Publishing and following from the command line: device records, telemetry files,
alerts."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from streams.kafka.clients import client_kwargs
from streams.settings import Settings

log = logging.getLogger(__name__)


def device_messages(records: Iterable[dict[str, object]]) -> list[tuple[bytes, bytes | None]]:
    """Registry records as (key, value); a ``deleted`` record becomes a tombstone."""
    out: list[tuple[bytes, bytes | None]] = []
    for record in records:
        key = str(record["device_id"]).encode()
        out.append((key, None if record.get("deleted") else orjson.dumps(record)))
    return out


def telemetry_messages(data: bytes) -> tuple[list[tuple[bytes | None, bytes]], int]:
    """Lines of a JSON Lines file as messages, keyed by their device_id when they have one.

    Lines are sent as they are, valid or not (validation is the pipeline's job, and an
    operator re-driving dead letters wants the bytes unchanged); blank lines are skipped.
    Returns the messages and the number of lines without a usable key.
    """
    messages: list[tuple[bytes | None, bytes]] = []
    unkeyed = 0
    for line in data.splitlines():
        if not line.strip():
            continue
        key: bytes | None = None
        try:
            doc = orjson.loads(line)
            if isinstance(doc, dict):
                if isinstance(doc.get("device_id"), str):
                    key = doc["device_id"].encode()
                elif isinstance(doc.get("readings"), list) and doc["readings"]:
                    first = doc["readings"][0]
                    if isinstance(first, dict) and isinstance(first.get("device_id"), str):
                        key = first["device_id"].encode()
        except orjson.JSONDecodeError:
            pass
        if key is None:
            unkeyed += 1
        messages.append((key, line))
    return messages, unkeyed


async def publish(
    settings: Settings, topic: str, messages: Iterable[tuple[bytes | None, bytes | None]]
) -> int:
    producer = AIOKafkaProducer(
        **client_kwargs(settings), acks="all", linger_ms=5, max_request_size=2**20
    )
    await producer.start()
    deliveries = []
    try:
        for key, value in messages:
            deliveries.append(await producer.send(topic, value, key=key))
        # flush() does not report failed deliveries (a refused ACL, a too-large
        # message): the futures do, and a message counts as sent once Kafka has it.
        results = await asyncio.gather(*deliveries, return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            raise failed[0]
    finally:
        await producer.stop()
    return len(deliveries)


async def follow(
    settings: Settings, topic: str, from_beginning: bool = False
) -> AsyncIterator[bytes]:
    """The values of ``topic`` as they arrive (a consumer of no group: nothing committed)."""
    consumer = AIOKafkaConsumer(
        topic,
        **client_kwargs(settings),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest" if from_beginning else "latest",
    )
    try:
        await consumer.start()  # inside: a refused start must still close the client
        async for record in consumer:
            if record.value is not None:
                yield record.value
    finally:
        await consumer.stop()
