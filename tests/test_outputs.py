"""Outputs handed to the real broker in batches: every record arrives once, on the
partition Kafka's default partitioner gives its key, in the order it was added."""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaProducer

from streams.kafka.admin import ensure_topics
from streams.outputs import Outputs
from streams.settings import Settings
from streams.stages.routing import key_partition
from streams.topics import TopicSpec
from tests.kafkautil import consume_records

pytestmark = pytest.mark.kafka


async def test_records_arrive_once_in_order_on_their_key_partition(settings: Settings) -> None:
    topic = settings.topic_prefix + "out"
    reference = settings.topic_prefix + "reference"
    await ensure_topics(settings, [TopicSpec(topic, 3, {}), TopicSpec(reference, 3, {})])
    # A small batch size: 4,000 records of ~40 bytes need many builders per partition.
    producer = AIOKafkaProducer(bootstrap_servers=settings.broker, max_batch_size=4096)
    await producer.start()
    try:
        outputs = Outputs()
        sent = [(f"dev-{i % 37}".encode(), f"value-{i:06d}".encode()) for i in range(4000)]
        for key, value in sent[:2500]:
            outputs.add(topic, key, value)
        outputs.add(topic, None, b"pinned", 2)
        futures = await outputs.flush(producer, outputs.take())
        for key, value in sent[2500:]:
            outputs.add(topic, key, value)
        futures += await outputs.flush(producer, outputs.take())
        assert len(futures) > 6  # more than one batch per partition
        for f in futures:
            await f
        for i in range(37):  # what aiokafka's own partitioner does with the same keys
            await producer.send_and_wait(reference, b"", key=f"dev-{i}".encode())
    finally:
        await producer.stop()
    got = await consume_records(settings.broker, topic, len(sent) + 1, timeout=30)
    ref = await consume_records(settings.broker, reference, 37, timeout=30)
    assert sorted((r.key or b"", r.value) for r in got) == sorted([*sent, (b"", b"pinned")])
    expected_partition = {r.key: r.partition for r in ref}
    for r in got:
        assert r.partition == (2 if r.key is None else expected_partition[r.key])
    for key in expected_partition:
        assert [r.value for r in got if r.key == key] == [v for k, v in sent if k == key]


async def test_a_record_larger_than_a_batch_goes_in_a_batch_of_its_own(
    settings: Settings,
) -> None:
    topic = settings.topic_prefix + "big"
    await ensure_topics(settings, [TopicSpec(topic, 1, {})])
    producer = AIOKafkaProducer(bootstrap_servers=settings.broker, max_batch_size=1024)
    await producer.start()
    try:
        outputs = Outputs()
        values = [b"a" * 100, b"b" * 5000, b"c" * 100]
        for value in values:
            outputs.add(topic, b"k", value)
        futures = await outputs.flush(producer, outputs.take())
        assert len(futures) == 3
        for f in futures:
            await f
    finally:
        await producer.stop()
    got = await consume_records(settings.broker, topic, 3, timeout=30)
    assert [r.value for r in got] == values


async def test_a_devices_owner_partition_is_used_where_the_topic_has_as_many(
    settings: Settings,
) -> None:
    same, other = settings.topic_prefix + "same", settings.topic_prefix + "other"
    await ensure_topics(settings, [TopicSpec(same, 3, {}), TopicSpec(other, 2, {})])
    # An owner the key's own hash would not give: the record must go where it is told.
    owner = (key_partition(b"k", 3) + 1) % 3
    producer = AIOKafkaProducer(bootstrap_servers=settings.broker)
    await producer.start()
    try:
        outputs = Outputs(owner_partitions=3)
        for topic in (same, other):  # (partition counts not known yet: the key decides)
            outputs.add(topic, b"k", b"first", None, owner)
        futures = await outputs.flush(producer, outputs.take())
        for topic in (same, other):
            outputs.add(topic, b"k", b"owned", None, owner)
        futures += await outputs.flush(producer, outputs.take())
        for f in futures:
            await f
    finally:
        await producer.stop()
    got = {
        (topic, r.value): r.partition
        for topic in (same, other)
        for r in await consume_records(settings.broker, topic, 2, timeout=30)
    }
    assert got == {
        (same, b"first"): key_partition(b"k", 3),
        (same, b"owned"): owner,
        (other, b"first"): key_partition(b"k", 2),
        (other, b"owned"): key_partition(b"k", 2),
    }
