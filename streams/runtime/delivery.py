"""Delivery: outputs in flight, and checkpoints that acknowledge input only after its
outputs and its state.

At-least-once without loss: an input event is acknowledged (so its offset may be
committed) only once everything it caused is acknowledged by Kafka: its outputs and
the state that contains it. Events are held in ``pending`` until a checkpoint has
written the state they changed; a message redelivered after a crash is then recognised
by the per-key input offsets in the state (DeviceState.applied).

Outputs go before the state that records them (a closed window, a fired alert): a
checkpoint waits for the outputs in flight, then writes the state. A crash in between
emits them again after the restart, identical (windows: consumers de-duplicate on
device_id + window_start; alerts: the same alert_id); the other order could lose them.
Nothing on the per-message path waits for Kafka.

Exactly-once is a variant of the same checkpoint: every output, state record and input
offset of a checkpoint is one transaction of this worker's own transactional producer.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

from aiokafka import AIOKafkaProducer, TopicPartition

from streams.core import Pipeline
from streams.kafka.clients import client_kwargs
from streams.outputs import (
    OUTPUT_BATCH_BYTES,
    OUTPUT_LINGER_S,
    OUTPUT_REQUEST_BYTES,
    Linger,
    Producer,
    Record,
)
from streams.settings import Settings
from streams.state import Write

log = logging.getLogger(__name__)

# A checkpoint Kafka refused for good (see Delivery.failed): EX_SOFTWARE.
EXIT_CHECKPOINT_FAILED = 70


class Transactions:
    """This worker's transactional producer: a transaction is begun by the first send
    after a commit and committed, with the input offsets, by the checkpoint."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.transactional_id = f"{settings.app_id}-{settings.instance_id}"
        self._producer: AIOKafkaProducer | None = None
        self.open = False

    @property
    def producer(self) -> AIOKafkaProducer:
        assert self._producer is not None, "Transactions.start() first"
        return self._producer

    async def start(self) -> None:
        """Fences this instance's previous incarnation and aborts its open transaction;
        before anything is read. (aiokafka clients are made in the loop that runs them.)"""
        self._producer = AIOKafkaProducer(
            **client_kwargs(self.settings),
            transactional_id=self.transactional_id,
            enable_idempotence=True,
            acks="all",
            linger_ms=5,
            max_batch_size=OUTPUT_BATCH_BYTES,
            max_request_size=OUTPUT_REQUEST_BYTES,
            transaction_timeout_ms=int(self.settings.transaction_timeout_s * 1000),
        )
        await self._producer.start()
        log.info("exactly-once: transactional id %s", self.transactional_id)

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()

    async def ensure_open(self) -> None:
        """Before anything is sent: a transaction begins with its first record."""
        if not self.open:
            await self.producer.begin_transaction()
            self.open = True

    async def abort(self) -> None:
        if self.open:
            self.open = False
            await self.producer.abort_transaction()

    async def commit(self, offsets: dict[TopicPartition, int], group_id: str) -> None:
        if not offsets and not self.open:
            return
        await self.ensure_open()
        if offsets:
            await self.producer.send_offsets_to_transaction(offsets, group_id)
        await self.producer.commit_transaction()
        self.open = False


class Delivery:
    """The core's outputs on their way to Kafka, the input events they stand for, and
    the checkpoint that acknowledges those events.

    ``step`` is held while the core changes state and queues its outputs, and while a
    checkpoint takes its snapshot: a snapshot never holds a change whose outputs are not
    queued. Outputs leave in one batch per partition, at the latest OUTPUT_LINGER_S
    after the first, or at a checkpoint: straight to aiokafka, not through faust's
    Topic.send or aiokafka's per-record send (their layers cost more than the rest of a
    reading's path, profiled)."""

    def __init__(
        self,
        core: Pipeline,
        producer: Callable[[], Producer],
        group_id: str,
        transactions: Transactions | None = None,
    ) -> None:
        self.core = core
        self.group_id = group_id
        self.transactions = transactions
        self._producer = producer
        self.step = asyncio.Lock()
        self._lock = asyncio.Lock()  # one checkpoint at a time
        self.pending: list[Any] = []  # input events, acknowledged by the next checkpoint
        self._inflight: list[Awaitable[Any]] = []  # outputs handed over, not yet acked
        self._linger = Linger(OUTPUT_LINGER_S, self._linger_flush)
        self._background: set[asyncio.Task[None]] = set()

    def producer(self) -> Producer:
        if self.transactions is not None:
            producer: Producer = self.transactions.producer
            return producer
        return self._producer()

    def queued(self) -> None:
        """After the core ran: its outputs leave within OUTPUT_LINGER_S."""
        if self.core.outputs:
            self._linger.arm()

    async def flush(self) -> None:
        """Under ``step``: what is queued goes to the producer; its futures are what the
        next checkpoint awaits before acknowledging input."""
        taken = self.core.outputs.take()
        if not taken:
            return
        if self.transactions is not None:
            await self.transactions.ensure_open()
        self._inflight.extend(await self.core.outputs.flush(self.producer(), taken))

    async def _linger_flush(self) -> None:
        try:
            async with self.step:
                await self.flush()
        except Exception as exc:  # records taken but not handed over: start again
            await self.failed(exc)

    async def _send_writes(self, writes: list[Write]) -> list[Awaitable[Any]]:
        records: dict[str, list[Record]] = {}
        for w in writes:
            records.setdefault(w.sink, []).append((w.key, w.value, w.partition))
        return await self.core.outputs.flush(self.producer(), records)

    async def checkpoint(self) -> None:
        """Write the state changed so far, after the outputs that it records, then
        acknowledge the input events it stands for."""
        txn = self.transactions
        async with self._lock:
            async with self.step:  # one instant: events, the state they made, their outputs
                events, self.pending = self.pending, []
                writes = self.core.snapshot()
                await self.flush()
                sent, self._inflight = self._inflight, []
                if txn is not None:
                    # Under `step` throughout: nothing may join the transaction after the
                    # snapshot (an output whose input offset is not in it would be
                    # committed without it). Processing pauses a few ms per commit.
                    await self._commit(txn, events, writes)
            if txn is None:
                if sent:
                    await asyncio.gather(*sent)
                # Under the checkpoint lock: an older encoding of a key never lands after
                # a newer one (the changelog's last record per key is what a restart
                # restores).
                futures = await self._send_writes(writes)
                if futures:
                    await asyncio.gather(*futures)
        # (exactly-once: faust commits these offsets again when it sees them
        # acknowledged, the same values, harmless)
        for event in events:
            event.ack()

    async def _commit(self, txn: Transactions, events: list[Any], writes: list[Write]) -> None:
        if writes:
            await txn.ensure_open()
            await self._send_writes(writes)
        offsets: dict[TopicPartition, int] = {}
        for event in events:
            msg = event.message
            tp = TopicPartition(msg.topic, msg.partition)
            offsets[tp] = max(offsets.get(tp, 0), msg.offset + 1)
        await txn.commit(offsets, self.group_id)

    async def abandon(self) -> None:
        """Exactly-once, after the group forgot this worker: its open transaction must
        not commit (its partitions may be another worker's already)."""
        assert self.transactions is not None
        async with self._lock, self.step:
            self.pending.clear()  # never acknowledged: processed again by the new owner
            self._inflight.clear()
            self.core.discard()  # the changelog, not this memory, is the truth now
            await self.transactions.abort()
        log.warning("exactly-once: group membership lost, open transaction aborted")

    def start_checkpoint(self) -> None:
        """A checkpoint now, in the background, unless one is under way."""
        if not self._lock.locked() and not self._background:
            task = asyncio.ensure_future(self.checkpoint())
            self._background.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            crash = asyncio.ensure_future(self.failed(exc))
            self._background.add(crash)

    async def failed(self, exc: BaseException) -> NoReturn:
        """Kafka refused an output or a state record for good (retriable errors are
        retried by the producer, for as long as the broker is away). The events of that
        checkpoint are neither acknowledged nor resendable here: stop, so that the input
        is read again from the committed offsets (by a restarted worker or the others).
        Going on would leave a gap that blocks commits, or lose outputs. Not a clean
        stop: that would run another checkpoint on the way out."""
        log.critical(
            "checkpoint failed (%r): stopping the worker so its uncommitted input is "
            "processed again; nothing acknowledged is lost",
            exc,
        )
        logging.shutdown()
        os._exit(EXIT_CHECKPOINT_FAILED)

    async def stop(self) -> None:
        """On the way out: the last checkpoint (before faust stops its producer)."""
        try:
            await self.checkpoint()
        finally:
            self._linger.cancel()
            if self.transactions is not None:
                await self.transactions.stop()
