"""The pipeline's topology: topics, tables and agents, wired onto a faust app.

It reads top to bottom in the order data flows. The logic of each stage lives in pure
modules (:mod:`streams.ingest` and what it uses); the agents here only move bytes
between Kafka and those stages.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import faust
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.districts import (
    DistrictOutbox,
    Districts,
    decode_district,
    district_message,
    encode_district,
)
from streams.enrich import Registry
from streams.ingest import (
    Ingest,
    Outbox,
    Source,
    WindowConfig,
    decode_device,
    encode_device,
)
from streams.metrics import Metrics, serve
from streams.routing import device_partition, key_partition
from streams.settings import Settings
from streams.state import DurableMap, Write
from streams.topics import (
    DEADLETTER,
    DEVICES,
    METRICS_DEVICE,
    METRICS_DISTRICT,
    TELEMETRY_BY_DEVICE,
    TELEMETRY_ENRICHED,
    TELEMETRY_RAW,
    WINDOWS_BY_DISTRICT,
)
from streams.validate import Limits
from streams.windows import DeviceState, DistrictState, device_window_record

log = logging.getLogger(__name__)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class _CheckpointOnCommit(faust.Sensor):
    """Starts a checkpoint whenever faust is about to commit, so waiting for acks
    (rebalance, shutdown) does not wait for the next timer tick."""

    def __init__(self, start: Callable[[], None]) -> None:
        super().__init__()
        self._start = start

    def on_commit_initiated(self, consumer: Any) -> Any:
        self._start()
        return None


def build(
    app: faust.App, settings: Settings, metrics: Metrics | None = None
) -> Callable[[], Awaitable[None]]:
    """Register every stage of the pipeline on ``app``; returns what must run before
    the worker starts (loading the device registry)."""
    metrics = metrics if metrics is not None else Metrics()
    prefix = settings.topic_prefix
    window_ms = settings.window_s * 1000
    district_ms = settings.district_window_s * 1000
    grace_ms = int(settings.grace_s * 1000)

    # --- topics ---------------------------------------------------------------------
    raw_topic = app.topic(prefix + TELEMETRY_RAW)
    by_device_topic = app.topic(prefix + TELEMETRY_BY_DEVICE)
    by_district_topic = app.topic(prefix + WINDOWS_BY_DISTRICT)
    deadletter_topic = app.topic(prefix + DEADLETTER)
    enriched_topic = app.topic(prefix + TELEMETRY_ENRICHED)
    device_windows_topic = app.topic(prefix + METRICS_DEVICE)
    district_windows_topic = app.topic(prefix + METRICS_DISTRICT)
    devices_topic_name = prefix + DEVICES

    # --- tables: per-device and per-district state, changelogged -----------------------
    devices_table = app.Table(
        "device-state", partitions=settings.partitions, key_type=bytes, value_type=bytes
    )
    districts_table = app.Table(
        "district-state", partitions=settings.partitions, key_type=bytes, value_type=bytes
    )
    device_states: DurableMap[DeviceState] = DurableMap(devices_table, encode_device, decode_device)
    district_states: DurableMap[DistrictState] = DurableMap(
        districts_table, encode_district, decode_district
    )
    registry = Registry()
    follower = RegistryFollower(settings, devices_topic_name, registry, metrics)

    # --- stages (pure; see streams/ingest.py and streams/districts.py) -------------------
    ingest_stage = Ingest(
        limits=Limits(
            max_bytes=settings.max_message_bytes,
            max_future_ms=int(settings.max_future_s * 1000),
            max_past_ms=int(settings.max_past_s * 1000),
        ),
        registry=registry,
        states=device_states,
        metrics=metrics,
        partitions=settings.partitions,
        windows=WindowConfig(window_ms, grace_ms, int(settings.window_idle_s * 1000)),
        pass_unknown=settings.unknown_devices == "pass",
        emit_enriched=settings.emit_enriched,
    )
    district_stage = Districts(
        states=district_states,
        registry=registry,
        metrics=metrics,
        district_size_ms=district_ms,
        grace_ms=grace_ms,
        wait_ms=int(settings.district_wait_s * 1000),
    )

    # --- delivery and checkpoints ------------------------------------------------------
    # At-least-once without loss: an input event is acknowledged (so its offset may be
    # committed) only once everything it caused is acknowledged by Kafka: its outputs
    # and the state that contains it. Events are held in `pending` until a checkpoint
    # has written the state they changed; a message redelivered after a crash is then
    # recognised by the per-key input offsets in the state (DeviceState.applied).
    pending: list[Any] = []
    inflight: list[Awaitable[Any]] = []
    checkpoint_lock = asyncio.Lock()

    async def send(
        topic: Any, key: bytes | None, value: bytes, partition: int | None = None
    ) -> None:
        inflight.append(await topic.send(key=key, value=value, partition=partition))

    async def write(keys_of: Callable[[], list[Write]]) -> None:
        """Write state and wait for Kafka's ack: what follows may depend on it. Under
        the checkpoint's lock, so an older encoding of a key can never land after a
        newer one (the changelog's last record per key is what a restart restores)."""
        async with checkpoint_lock:
            futures = [
                await w.table.changelog_topic.send(key=w.key, value=w.value, partition=w.partition)
                for w in keys_of()
            ]
            if futures:
                await asyncio.gather(*futures)

    async def checkpoint() -> None:
        async with checkpoint_lock:
            # One instant: the events, the state they produced, the outputs in flight.
            events = pending[:]
            pending.clear()
            writes = device_states.collect() + district_states.collect()
            futures = inflight[:]
            inflight.clear()
            for w in writes:
                futures.append(
                    await w.table.changelog_topic.send(
                        key=w.key, value=w.value, partition=w.partition
                    )
                )
            if futures:
                await asyncio.gather(*futures)
            for event in events:
                event.ack()

    background: set[asyncio.Task[None]] = set()

    def start_checkpoint() -> None:
        if not checkpoint_lock.locked() and not background:
            task = asyncio.ensure_future(checkpoint())
            background.add(task)
            task.add_done_callback(_finished)

    def _finished(task: asyncio.Task[None]) -> None:
        background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("checkpoint failed; retrying later", exc_info=task.exception())

    app.sensors.add(_CheckpointOnCommit(start_checkpoint))

    async def drain(out: Outbox) -> None:
        """Send what a stage produced."""
        for key, value in out.deadletters:
            await send(deadletter_topic, key, value)
        for partition, readings in out.forwards.items():
            value = ingest_stage.forward_value(readings, out.forward_sources[partition])
            await send(by_device_topic, None, value, partition)
        for key, value in out.enriched:
            await send(enriched_topic, key, value)
        if out.closed:
            # At-least-once: the windows go out (and are acknowledged) before the state
            # that says they closed. A crash in between emits them again after the
            # restart, identical (consumers de-duplicate on device_id + window_start, the
            # district stage does so itself); the other order could lose them.
            futures = []
            for device, _, window in out.closed:
                start, aggs = window
                record = device_window_record(
                    device.device_id,
                    device.kind,
                    device.district,
                    device.site,
                    start,
                    window_ms,
                    aggs,
                )
                futures.append(
                    await device_windows_topic.send(
                        key=device.device_id.encode(), value=orjson.dumps(record)
                    )
                )
                metrics.windows_emitted_device.inc()
                message = district_message(device, window, window_ms)
                if message is not None:
                    futures.append(await by_district_topic.send(key=message[0], value=message[1]))
            await asyncio.gather(*futures)
            closed_ids = [device.device_id for device, _, _ in out.closed]
            await write(lambda: device_states.collect(closed_ids))
        out.clear()

    # --- agents ---------------------------------------------------------------------
    async def ingest_events(
        stream: faust.StreamT[bytes], stage: Callable[[bytes | None, Source, int, Outbox], None]
    ) -> None:
        out = Outbox()
        async for event in _unacked_events(stream):
            msg = event.message
            src = Source(msg.topic, msg.partition, msg.offset, msg.key)
            stage(msg.value, src, now_ms(), out)
            await drain(out)
            pending.append(event)

    @app.agent(raw_topic, name="ingest")
    async def ingest(stream: faust.StreamT[bytes]) -> None:
        """Validate raw telemetry; dead-letter the bad, forward foreign devices, window."""
        await ingest_events(stream, ingest_stage.on_raw)

    @app.agent(by_device_topic, name="ingest_forwarded")
    async def ingest_forwarded(stream: faust.StreamT[bytes]) -> None:
        """Readings of gateway batches, now on their device's partition."""
        await ingest_events(stream, ingest_stage.on_forwarded)

    @app.agent(by_district_topic, name="aggregate_districts")
    async def aggregate_districts(stream: faust.StreamT[bytes]) -> None:
        """Closed device windows into district windows (closed by the timer below)."""
        async for event in _unacked_events(stream):
            msg = event.message
            if msg.key is not None and msg.value is not None:
                district_stage.on_device_window(
                    msg.key, msg.value, msg.partition, msg.offset, now_ms()
                )
            pending.append(event)

    # --- timers: windows close when input goes quiet -----------------------------------
    @app.timer(1.0)
    async def close_quiet_windows() -> None:
        # An exception in a faust timer stops the whole worker: log it and go on.
        try:
            out = Outbox()
            ingest_stage.tick(now_ms(), out)
            await drain(out)
            district_out = DistrictOutbox()
            changed = district_stage.tick(now_ms(), district_out)
            # Outputs first, then the state that says they were emitted (see drain).
            futures = [
                await district_windows_topic.send(key=key, value=value)
                for key, value in district_out.records
            ]
            await asyncio.gather(*futures)
            await write(lambda: district_states.collect(changed))
        except Exception:
            log.exception("closing windows failed; retrying at the next tick")

    @app.timer(settings.state_flush_ms / 1000.0)
    async def checkpoint_state() -> None:
        try:
            await checkpoint()
        except Exception:
            # Events stay unacknowledged: they are redelivered if this worker stops.
            log.exception("checkpoint failed; retrying at the next interval")

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(sender: Any, revoked: set[Any], **kwargs: Any) -> None:
        # Whatever changed is written before another worker may take the partitions;
        # the decoded copies are dropped, since the store is the truth after a rebalance.
        await checkpoint()
        device_states.forget()
        district_states.forget()
        ingest_stage.active.clear()
        district_stage.active.clear()

    @devices_table.on_recover
    async def on_devices_recovered() -> None:
        # Restored state has open windows that the idle timer must visit.
        for key, state in device_states.items():
            if state.open:
                ingest_stage.active[key] = device_partition(key, settings.partitions)

    @districts_table.on_recover
    async def on_districts_recovered() -> None:
        for key, dstate in district_states.items():
            if dstate.open:
                district_stage.active[key] = key_partition(key.encode(), settings.partitions)

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def on_shutdown(sender: Any, **kwargs: Any) -> None:
        await checkpoint()  # before faust stops the producer

    # --- the device registry, whole on every worker ----------------------------------
    @app.task
    async def follow_registry() -> None:
        await follower.follow()

    @app.task
    async def serve_metrics() -> None:
        serve(metrics, settings.bind, settings.metrics_port)

    return follower.load


def _unacked_events(stream: faust.StreamT[bytes]) -> AsyncIterator[Any]:
    """The stream's events, acknowledged by the caller (after its checkpoint)."""
    events: AsyncIterator[Any] = cast(faust.Stream[bytes], stream).noack().events()
    return events


class RegistryFollower:
    """The compacted ``devices`` topic, read whole by every worker, then followed.

    A consumer without a group, assigned every partition: each worker needs every
    device, and nothing about this topic should be committed. :meth:`load` reads it to
    the end *before* the worker joins its group, so telemetry never waits on (or is
    dead-lettered for) a registry still loading; :meth:`follow` applies what comes later.
    """

    def __init__(self, settings: Settings, topic: str, registry: Registry, metrics: Metrics):
        self.settings = settings
        self.topic = topic
        self.registry = registry
        self.metrics = metrics
        self.positions: dict[TopicPartition, int] = {}

    def _consumer(self) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            bootstrap_servers=self.settings.broker,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )

    def _apply(self, tp: TopicPartition, records: list[Any]) -> None:
        for record in records:
            problem = self.registry.apply(record.key, record.value)
            if problem is not None:
                self.metrics.registry_errors.inc()
                log.warning("devices %d@%d ignored: %s", tp.partition, record.offset, problem)
        if records:
            self.positions[tp] = records[-1].offset + 1
        self.metrics.registry_devices.set(len(self.registry))

    async def load(self) -> None:
        consumer = self._consumer()
        await consumer.start()
        try:
            partitions: set[int] | None = None
            while not partitions:
                await consumer._client.force_metadata_update()
                partitions = consumer.partitions_for_topic(self.topic)
                if not partitions:
                    await asyncio.sleep(0.2)
            tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            end = await consumer.end_offsets(tps)
            self.positions = {tp: 0 for tp in tps}
            # Compaction can leave the end offset past the last record: compare positions.
            while [tp for tp in tps if await consumer.position(tp) < end[tp]]:
                batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
                for tp, records in batch.items():
                    self._apply(tp, records)
            for tp in tps:
                self.positions[tp] = await consumer.position(tp)
        finally:
            await consumer.stop()
        log.info("registry loaded: %d devices", len(self.registry))

    async def follow(self) -> None:
        consumer = self._consumer()
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
