"""Every reach into faust's or aiokafka's private internals (streams/runtime/internals.py)
still finds what it reaches for. When one of these fails after an upgrade, the worker's
use of it has moved: fix streams/runtime/internals.py before widening the pinned range."""

from __future__ import annotations

import inspect

import aiokafka
import faust
from aiokafka.consumer import subscription_state
from aiokafka.consumer.group_coordinator import GroupCoordinator
from faust.transport.drivers import aiokafka as faust_aiokafka

from streams.runtime.internals import input_view, read_committed


def sets(cls: type, attribute: str, method: str = "__init__") -> bool:
    """Does ``cls.method`` assign ``self.attribute``?"""
    return f"self.{attribute} = " in inspect.getsource(getattr(cls, method))


def test_read_committed_patches_the_consumer_faust_creates() -> None:
    thread = faust_aiokafka.AIOKafkaConsumerThread
    assert callable(thread._create_worker_consumer)
    assert "self._isolation_level" in inspect.getsource(aiokafka.AIOKafkaConsumer.start)
    read_committed()
    assert thread._citystreams_read_committed  # type: ignore[attr-defined]


def test_faust_producer_and_consumer_internals() -> None:
    assert callable(faust_aiokafka.Producer._ensure_producer)
    assert "self._consumer = " in inspect.getsource(faust_aiokafka.AIOKafkaConsumerThread)
    app = faust.App("internals-test", broker="kafka://127.0.0.1:1")
    consumer = app.consumer
    assert isinstance(consumer._thread, faust_aiokafka.AIOKafkaConsumerThread)  # type: ignore[attr-defined]
    assert isinstance(consumer._read_offset, dict)  # type: ignore[attr-defined]
    assert input_view(app, None) is None  # not started: the idle timer's fallback


async def test_aiokafka_consumer_internals() -> None:
    consumer = aiokafka.AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1")
    try:
        assert callable(consumer._client.force_metadata_update)
        assert isinstance(consumer._subscription, subscription_state.SubscriptionState)
        for method in ("last_poll_timestamp", "last_stable_offset", "highwater"):
            assert callable(getattr(consumer, method))
    finally:
        await consumer._client.close()
    assert sets(aiokafka.AIOKafkaConsumer, "_coordinator", "start")
    assert sets(GroupCoordinator, "member_id")
    assert isinstance(subscription_state.SubscriptionState.subscription, property)
    assert isinstance(subscription_state.Subscription.assignment, property)
    assert callable(subscription_state.Assignment.state_value)
    state = subscription_state.TopicPartitionState
    assert isinstance(state.has_valid_position, property)
    assert isinstance(state.position, property)
