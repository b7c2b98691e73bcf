"""Every reach into faust's or aiokafka's private internals, and nowhere else.

They are not public API: the versions are pinned (pyproject.toml) to the ranges CI
tests, and ``tests/test_internals.py`` fails loudly when an upgrade moves one of them.
Where a reach can fail at run time without harm, it returns None or False and the
caller falls back (said at each function); where it cannot, it raises.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import faust
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from faust.transport.drivers import aiokafka as aiokafka_driver


def read_committed() -> None:
    """Make faust's group consumer read with ``isolation_level=read_committed``.

    faust picks read_committed only with its own exactly-once mode, which would also
    replace its producer with one transaction per partition around faust's sends; our
    pipeline runs its own transactions (streams.runtime.delivery.Transactions). Records
    of an aborted transaction (a worker killed mid-checkpoint) must not be read from
    the internal topics. Without transactions on a topic both levels read the same.
    """
    thread = aiokafka_driver.AIOKafkaConsumerThread
    if getattr(thread, "_citystreams_read_committed", False):
        return
    create = thread._create_worker_consumer

    def create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = create(self, transport)
        consumer._isolation_level = "read_committed"  # read by AIOKafkaConsumer.start()
        return consumer

    thread._create_worker_consumer = create_worker_consumer  # type: ignore[method-assign]
    thread._citystreams_read_committed = True  # type: ignore[attr-defined]


def aiokafka_producer(app: faust.App) -> AIOKafkaProducer:
    """faust's own aiokafka producer (started with the app)."""
    producer: AIOKafkaProducer = app.producer._ensure_producer()  # type: ignore[attr-defined]
    return producer


def lost_membership(app: faust.App) -> bool:
    """True when the group coordinator has forgotten this worker (its session expired):
    aiokafka resets the member id before it rejoins and revokes. False when it cannot
    be had (the transaction then commits as in a normal rebalance)."""
    try:
        member = app.consumer._thread._consumer._coordinator.member_id  # type: ignore[attr-defined]
    except AttributeError:
        return False
    return bool(member == "")


class InputView(NamedTuple):
    """Where a worker stands on one input partition, from the consumer's internals."""

    fetched_at: int | None  # wall time (ms) of the broker's latest fetch answer
    position: int | None  # the next offset to fetch (past markers and aborted records)
    end: int | None  # the last stable offset (or the high watermark)
    delivered: int | None  # the latest offset faust handed to the agent

    def caught_up(self, processed: int | None) -> bool:
        if self.position is None or self.end is None or self.position < self.end:
            return False
        return self.delivered is None or (processed is not None and processed >= self.delivered)


def input_view(app: faust.App, tp: Any) -> InputView | None:
    """The consumer's view of ``tp``: aiokafka's fetch state inside faust's consumer
    thread and faust's read offset. None when it cannot be had: the idle timer then
    falls back to offsets alone."""
    try:
        consumer = app.consumer._thread._consumer  # type: ignore[attr-defined]
        fetched = consumer.last_poll_timestamp(tp)
        state = consumer._subscription.subscription.assignment.state_value(tp)
        position = state.position if state.has_valid_position else None
        stable = consumer.last_stable_offset(tp)
        end = stable if stable is not None and stable >= 0 else consumer.highwater(tp)
        delivered = app.consumer._read_offset.get(tp)  # type: ignore[attr-defined]
    except (AttributeError, AssertionError, KeyError, TypeError):
        return None
    return InputView(
        None if fetched is None else int(fetched),
        position,
        end,
        None if delivered is None else int(delivered),
    )


async def refresh_metadata(consumer: AIOKafkaConsumer) -> None:
    """Ask the cluster for fresh metadata now (aiokafka refreshes it only now and then,
    and a topic created a moment ago is not in it yet)."""
    await consumer._client.force_metadata_update()
