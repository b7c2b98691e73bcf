"""The pipeline's topology: topics, tables and agents, wired onto a faust app.

It reads top to bottom in the order data flows. The logic of each stage lives in pure
modules (:mod:`streams.ingest` and what it uses); the agents here only move bytes
between Kafka and those stages.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.enrich import Registry
from streams.ingest import Ingest, Outbox, Source, decode_seq, encode_seq
from streams.metrics import Metrics, serve
from streams.settings import Settings
from streams.state import DurableMap
from streams.topics import (
    DEADLETTER,
    DEVICES,
    TELEMETRY_BY_DEVICE,
    TELEMETRY_ENRICHED,
    TELEMETRY_RAW,
)
from streams.validate import Limits

log = logging.getLogger(__name__)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def build(app: faust.App, settings: Settings, metrics: Metrics | None = None) -> None:
    """Register every stage of the pipeline on ``app``."""
    metrics = metrics if metrics is not None else Metrics()
    prefix = settings.topic_prefix

    # --- topics ---------------------------------------------------------------------
    raw_topic = app.topic(prefix + TELEMETRY_RAW)
    by_device_topic = app.topic(prefix + TELEMETRY_BY_DEVICE)
    deadletter_topic = app.topic(prefix + DEADLETTER)
    enriched_topic = app.topic(prefix + TELEMETRY_ENRICHED)
    devices_topic_name = prefix + DEVICES

    # --- tables ---------------------------------------------------------------------
    # Highest seq and recent-seq bitmap per device; changelogged, flushed per interval.
    seq_table = app.Table("seqs", partitions=settings.partitions, key_type=bytes, value_type=bytes)
    seqs: DurableMap[Any] = DurableMap(seq_table, encode_seq, decode_seq)
    registry = Registry()
    registry_ready = asyncio.Event()

    ingest_stage = Ingest(
        limits=Limits(
            max_bytes=settings.max_message_bytes,
            max_future_ms=int(settings.max_future_s * 1000),
            max_past_ms=int(settings.max_past_s * 1000),
        ),
        registry=registry,
        seqs=seqs,
        metrics=metrics,
        partitions=settings.partitions,
        pass_unknown=settings.unknown_devices == "pass",
        emit_enriched=settings.emit_enriched,
    )

    def drain(out: Outbox) -> None:
        """Hand what a stage produced to the producer (buffered; faust flushes it)."""
        for key, value in out.deadletters:
            deadletter_topic.send_soon(key=key, value=value)
        for partition, readings in out.forwards.items():
            value = ingest_stage.forward_value(readings, out.forward_sources[partition])
            by_device_topic.send_soon(key=None, value=value, partition=partition)
        for key, value in out.enriched:
            enriched_topic.send_soon(key=key, value=value)
        out.clear()

    # --- agents ---------------------------------------------------------------------
    @app.agent(raw_topic, name="ingest")
    async def ingest(stream: faust.StreamT[bytes]) -> None:
        """Validate raw telemetry; dead-letter the bad, forward foreign devices, enrich."""
        await registry_ready.wait()  # an empty registry would dead-letter every device
        out = Outbox()
        async for event in stream.events():
            msg = event.message
            src = Source(msg.topic, msg.partition, msg.offset, msg.key)
            ingest_stage.on_raw(msg.value, src, now_ms(), out)
            drain(out)

    @app.agent(by_device_topic, name="ingest_forwarded")
    async def ingest_forwarded(stream: faust.StreamT[bytes]) -> None:
        """Readings of gateway batches, now on their device's partition."""
        await registry_ready.wait()
        out = Outbox()
        async for event in stream.events():
            msg = event.message
            src = Source(msg.topic, msg.partition, msg.offset, msg.key)
            ingest_stage.on_forwarded(msg.value, src, now_ms(), out)
            drain(out)

    # --- state durability -------------------------------------------------------------
    @app.timer(settings.state_flush_ms / 1000.0)
    async def flush_state() -> None:
        # An exception in a faust timer stops the whole worker: log it and go on.
        try:
            seqs.flush()
        except Exception:
            log.exception("flushing state failed; retrying at the next interval")

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(sender: Any, revoked: set[Any], **kwargs: Any) -> None:
        # Whatever changed is written before another worker may take the partitions.
        seqs.flush()
        seqs.forget()

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def on_shutdown(sender: Any, **kwargs: Any) -> None:
        seqs.flush()  # before faust's final producer flush

    # --- the device registry, whole on every worker ----------------------------------
    @app.task
    async def follow_registry() -> None:
        await _follow_registry(settings, devices_topic_name, registry, metrics, registry_ready)

    @app.task
    async def serve_metrics() -> None:
        serve(metrics, settings.bind, settings.metrics_port)


async def _follow_registry(
    settings: Settings,
    topic: str,
    registry: Registry,
    metrics: Metrics,
    ready: asyncio.Event,
) -> None:
    """Read the compacted ``devices`` topic from the start, then keep following it.

    A consumer without a group, assigned every partition: each worker needs every
    device, and nothing about this topic should be committed. ``ready`` is set once
    the records that existed at start have been applied.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.broker,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        partitions: set[int] | None = None
        while not partitions:
            partitions = consumer.partitions_for_topic(topic)
            if not partitions:
                await consumer._client.force_metadata_update()
                partitions = consumer.partitions_for_topic(topic)
                if not partitions:
                    await asyncio.sleep(0.5)
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        pending = {tp for tp in tps if end[tp] > 0}
        if not pending:
            ready.set()
        while True:
            batch = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            for tp, records in batch.items():
                for record in records:
                    problem = registry.apply(record.key, record.value)
                    if problem is not None:
                        metrics.registry_errors.inc()
                        log.warning(
                            "devices %s@%d ignored: %s", tp.partition, record.offset, problem
                        )
                if tp in pending and records and records[-1].offset + 1 >= end[tp]:
                    pending.discard(tp)
            metrics.registry_devices.set(len(registry))
            if pending and not ready.is_set():
                # Compaction can leave the end offset past the last record.
                for tp in list(pending):
                    if await consumer.position(tp) >= end[tp]:
                        pending.discard(tp)
            if not pending and not ready.is_set():
                log.info("registry loaded: %d devices", len(registry))
                ready.set()
    finally:
        await consumer.stop()
