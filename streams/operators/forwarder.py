"""``citystreams alerts forward``: Alertmanager's active alerts kept equal to the open
alert episodes.

The loop, per batch of ``alerts`` read in the forwarder's own consumer group
(``<app id>.alerts-forward``):

1. apply the events to the :class:`~streams.operators.episodes.Book`;
2. write each changed episode to the compacted ``<prefix><app id>.state.forwarder``
   (keyed by alert_id) and wait for Kafka's acknowledgement;
3. commit the batch's offsets;
4. hand the changes to one delivery task per Alertmanager.

So Kafka always knows every episode whose event was committed, and a forwarder that
restarts (or was killed with ``kill -9``) reads that topic whole and posts every open
episode, and every resolution not yet delivered, before it reads on. The topic, not a
re-read of ``alerts``, is the state: ``alerts`` keeps the broker's retention, and an
episode may stay open (a reefer unplugged over a holiday) for longer than that.

Delivery: each Alertmanager has an :class:`~streams.operators.episodes.Outbox` of
episodes to post; its task posts them in batches, retries a failure with exponential
backoff up to ``CITYSTREAMS_ALERTMANAGER_RETRY_MAX_S`` and drops nothing. Every
``CITYSTREAMS_ALERTMANAGER_RESEND_S`` every open episode is marked again (firing alerts
must be re-posted before their ``endsAt``). An episode whose resolution reached every
Alertmanager is closed (and its acknowledgement's silences expired).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import time
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams.kafka.clients import client_kwargs
from streams.metrics import ForwarderMetrics, serve
from streams.operators.alertmanager import Alertmanager, AlertmanagerError
from streams.operators.episodes import Book, Outbox, Tracked, check_event
from streams.runtime.changelogs import read_whole
from streams.runtime.followers import Follower
from streams.settings import Settings
from streams.stages.enrich import Registry
from streams.topics import ALERTS, DEVICES, STATE_FORWARDER, topic_name

log = logging.getLogger(__name__)

BATCH = 500  # alerts per POST
FIRST_BACKOFF_S = 0.5


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def group_id(settings: Settings) -> str:
    return f"{settings.app_id}.alerts-forward"


def state_topic(settings: Settings) -> str:
    return topic_name(settings.topic_prefix, STATE_FORWARDER, settings.app_id)


async def load_book(settings: Settings) -> Book:
    """The forwarder's episodes as its state topic holds them."""
    book = Book()

    def apply(_: TopicPartition, records: list[Any]) -> None:
        for record in records:
            if record.key is not None:
                book.restore(record.key, record.value)

    await read_whole(settings, state_topic(settings), apply, wait_s=10.0)
    return book


class Forwarder:
    def __init__(self, settings: Settings, metrics: ForwarderMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics if metrics is not None else ForwarderMetrics()
        self.book = Book()
        self.registry = Registry()
        # for the ``parent`` label of new episodes
        self.registry_follower = Follower(
            settings, topic_name(settings.topic_prefix, DEVICES), self.registry.apply, wait_s=10.0
        )
        self.managers = [
            Alertmanager(url, settings.alertmanager_timeout_s) for url in settings.alertmanager_urls
        ]
        if not self.managers:
            raise ValueError("CITYSTREAMS_ALERTMANAGER_URL names no Alertmanager")
        self.outboxes = {m.url: Outbox() for m in self.managers}
        self.wake = {m.url: asyncio.Event() for m in self.managers}
        self.resend_ms = int(settings.alertmanager_resend_s * 1000)
        self.producer: AIOKafkaProducer | None = None
        self.dirty: set[str] = set()  # episodes whose state must be written
        self.writing = asyncio.Lock()
        self.background: set[asyncio.Future[None]] = set()  # silences being expired

    # --- state -------------------------------------------------------------------
    async def restore(self) -> None:
        self.book = await load_book(self.settings)
        now = now_ms()
        for tracked in self.book.unsettled():
            self._mark(tracked, now, change=True)
        log.info(
            "forwarder: %d episode(s) restored, %d open", len(self.book), len(self.book.firing())
        )

    async def write_state(self, tombstones: tuple[str, ...] = ()) -> None:
        """Changed episodes (and forgotten ones) to the state topic, acknowledged.

        Serialised by a lock: a caller that finds its changes already taken by another
        write returns only once that write is acknowledged (the input loop commits its
        offsets after this returns)."""
        assert self.producer is not None
        topic = state_topic(self.settings)
        async with self.writing:
            changed, self.dirty = sorted(self.dirty), set()
            sends = []
            for alert_id in changed:
                tracked = self.book.get(alert_id)
                value = tracked.to_json() if tracked is not None else None
                sends.append(await self.producer.send(topic, value, key=alert_id.encode()))
            for alert_id in tombstones:
                sends.append(await self.producer.send(topic, None, key=alert_id.encode()))
            for delivery in sends:
                await delivery  # a send Kafka refuses for good stops the forwarder

    def _mark(self, tracked: Tracked, now: int, change: bool) -> None:
        for url, outbox in self.outboxes.items():
            outbox.mark(tracked, now, change)
            self.wake[url].set()

    # --- input -------------------------------------------------------------------
    def apply(self, record: Any) -> None:
        """One record of ``alerts``."""
        self.metrics.events.inc()
        try:
            event = orjson.loads(record.value) if record.value is not None else None
        except orjson.JSONDecodeError:
            event = None
        problem = check_event(event)
        if problem is not None:
            log.warning("alerts %d@%d ignored: %s", record.partition, record.offset, problem)
            return
        assert isinstance(event, dict)
        device = self.registry.get(str(event.get("device_id")))
        parent = device.parent if device is not None else None
        tracked = self.book.apply(event, record.partition, record.offset, parent)
        if tracked is not None:
            self.dirty.add(tracked.alert_id)
            self._mark(tracked, now_ms(), change=True)

    async def consume(self) -> None:
        assert self.producer is not None
        consumer = AIOKafkaConsumer(
            topic_name(self.settings.topic_prefix, ALERTS),
            **client_kwargs(self.settings),
            group_id=group_id(self.settings),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
        )
        await consumer.start()
        try:
            while True:
                batch = await consumer.getmany(timeout_ms=500, max_records=5_000)
                self.metrics.assigned.set(len(consumer.assignment()))
                for records in batch.values():
                    for record in records:
                        self.apply(record)
                if batch:
                    await self.write_state()
                    await consumer.commit()
                self.metrics.open.set(len(self.book.firing()))
        finally:
            await consumer.stop()

    # --- output ------------------------------------------------------------------
    async def deliver(self, manager: Alertmanager) -> None:
        """Post what ``manager``'s outbox holds; retry failures with backoff."""
        outbox, wake = self.outboxes[manager.url], self.wake[manager.url]
        backoff = FIRST_BACKOFF_S
        while True:
            await wake.wait()
            wake.clear()
            while outbox:
                items = outbox.take(BATCH)
                now = now_ms()
                payload = []
                for alert_id, _ in items:
                    tracked = self.book.get(alert_id)
                    if tracked is not None:
                        payload += tracked.alerts(now, self.resend_ms, self.settings.runbook_base)
                try:
                    if payload:
                        await manager.post_alerts(payload)
                except AlertmanagerError as exc:
                    reason = "unreachable" if exc.retriable else "rejected"
                    self.metrics.failed.labels(manager.url, reason).inc()
                    if exc.retriable:
                        log.warning("%s; retrying in %.1f s", exc, backoff)
                        await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
                        backoff = min(backoff * 2, self.settings.alertmanager_retry_max_s)
                        continue
                    log.error("%s; these %d alert(s) are not sent again", exc, len(payload))
                else:
                    self.metrics.posted.labels(manager.url).inc(len(payload))
                settled = outbox.done(items)
                if backoff > FIRST_BACKOFF_S:
                    # Back after failures: it may have restarted, and Alertmanager keeps
                    # no alerts over a restart. Everything open goes again, now.
                    now = now_ms()
                    for tracked in self.book.firing():
                        outbox.mark(tracked, now, change=False)
                backoff = FIRST_BACKOFF_S
                await self._settle(settled)

    async def _settle(self, alert_ids: list[str]) -> None:
        """Episodes this Alertmanager is up to date with: those no Alertmanager waits
        for any more are settled (a resolution delivered everywhere closes its episode)."""
        now = now_ms()
        closed = []
        for alert_id in alert_ids:
            if any(alert_id in o.due for o in self.outboxes.values()):
                continue
            if self.book.settle(alert_id, now):
                self.dirty.add(alert_id)
                tracked = self.book.get(alert_id)
                if tracked is not None and tracked.closed_at is not None:
                    closed.append(alert_id)
        if self.dirty:
            await self.write_state()
        for alert_id in closed:
            task = asyncio.ensure_future(self.expire_silences(alert_id))
            self.background.add(task)
            task.add_done_callback(self.background.discard)

    async def expire_silences(self, alert_id: str) -> None:
        """A resolved episode's acknowledgement has done its work: its silences go."""
        for manager in self.managers:
            try:
                for silence in await manager.silences_for("alert_id", alert_id):
                    await manager.expire_silence(str(silence["id"]))
            except AlertmanagerError as exc:
                log.info("silences of %s left to expire by themselves: %s", alert_id, exc)

    async def resend(self) -> None:
        """Every resend interval: every open episode again (and forget old closed ones)."""
        while True:
            await asyncio.sleep(self.settings.alertmanager_resend_s)
            now = now_ms()
            for tracked in self.book.firing():
                self._mark(tracked, now, change=False)
            gone = self.book.purge(now)
            if gone:
                await self.write_state(tuple(gone))

    async def report(self) -> None:
        while True:
            now = now_ms()
            for url, outbox in self.outboxes.items():
                self.metrics.oldest_unsent.labels(url).set(outbox.oldest_ms(now) / 1000)
            self.metrics.open.set(len(self.book.firing()))
            await asyncio.sleep(1)

    async def run(self) -> None:
        await self.registry_follower.load()
        await self.restore()
        self.producer = AIOKafkaProducer(**client_kwargs(self.settings), acks="all")
        await self.producer.start()
        tasks = [
            asyncio.ensure_future(self.consume()),
            asyncio.ensure_future(self.registry_follower.follow()),
            asyncio.ensure_future(self.resend()),
            asyncio.ensure_future(self.report()),
            *(asyncio.ensure_future(self.deliver(m)) for m in self.managers),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # the error that stopped it
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.producer.stop()


def run_forwarder(settings: Settings) -> int:
    """The ``alerts forward`` command: serve /metrics, forward until SIGTERM or Ctrl-C."""
    from streams.kafka.admin import ensure_topics
    from streams.topics import topic_specs

    metrics = ForwarderMetrics()
    server, port = serve(metrics, settings.bind, settings.forwarder_metrics_port)
    log.info(
        "forwarding %s to %s; /metrics on port %d",
        topic_name(settings.topic_prefix, ALERTS),
        ", ".join(settings.alertmanager_urls),
        port,
    )

    async def main() -> None:
        specs = topic_specs(settings.topic_prefix, settings.partitions, settings.app_id)
        await ensure_topics(settings, [s for s in specs if s.base == STATE_FORWARDER])
        forwarder = Forwarder(settings, metrics)
        task = asyncio.ensure_future(forwarder.run())
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    try:
        asyncio.run(main())
    finally:
        server.shutdown()
    return 0
