"""The worker's wiring onto a faust app: topics, agents and timers, top to bottom in
the order data flows.

The stages are composed by the core (:mod:`streams.core`, no faust, no network); the
runtime around it (:mod:`streams.runtime`) delivers its outputs, checkpoints its state
and moves it on rebalances. What is here only connects them to faust.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import faust

from streams.core import Pipeline
from streams.metrics import Metrics, serve
from streams.runtime.changelogs import load_partitions
from streams.runtime.delivery import Delivery, Transactions
from streams.runtime.followers import Follower, apply_latest
from streams.runtime.internals import aiokafka_producer
from streams.runtime.rebalance import Rebalance
from streams.runtime.timers import InputWatch, Timers, now_ms
from streams.settings import EXACTLY_ONCE, Settings
from streams.stages.rules import RuleSet, load_rules

log = logging.getLogger(__name__)


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
    app: faust.App,
    settings: Settings,
    metrics: Metrics | None = None,
    ruleset: RuleSet | None = None,
) -> Callable[[], Awaitable[None]]:
    """Register every stage of the pipeline on ``app``; returns what must run before
    the worker starts (loading the device registry). Raises :class:`RulesError` for a
    rules file that cannot be used."""
    metrics = metrics if metrics is not None else Metrics()
    if ruleset is None:
        ruleset = load_rules(Path(settings.rules) if settings.rules else None)

    # --- the core, and the runtime around it -------------------------------------------
    core = Pipeline(settings, ruleset, metrics)
    topics = core.topics
    exactly_once = settings.processing_guarantee == EXACTLY_ONCE
    delivery = Delivery(
        core,
        lambda: aiokafka_producer(app),
        settings.app_id,
        Transactions(settings) if exactly_once else None,
    )
    watch = InputWatch(app, topics.device_inputs)

    async def load(topic: str, partitions: set[int]) -> Any:
        return await load_partitions(settings, topic, partitions)

    rebalance = Rebalance(app, core, delivery, watch, load, metrics)
    ready = rebalance.ready
    timers = Timers(core, delivery, watch, ready, metrics)
    registry = Follower(
        settings,
        topics.devices,
        core.registry.apply,
        on_error=metrics.registry_errors.inc,
        after=core.registry_changed,
    )
    occupancy = Follower(
        settings, topics.occupancy, lambda key, value: apply_latest(core.latest, key, value)
    )
    app.sensors.add(_CheckpointOnCommit(delivery.start_checkpoint))

    # --- agents: input to the core, one record at a time (faust's events) --------------
    async def process(
        stream: faust.StreamT[bytes], observe: Callable[[float], None] | None = None
    ) -> None:
        """Hand each event to the core; it is acknowledged by the checkpoint that writes
        what it changed (streams.runtime.delivery)."""
        async for event in _unacked_events(stream):
            if not ready.is_set():
                await ready.wait()
            msg = event.message
            async with delivery.step:
                core.process(msg.topic, msg.partition, (msg,), now_ms())
                delivery.queued()
            if observe is not None and msg.timestamp:
                observe(time.time() - msg.timestamp)  # faust gives the timestamp in seconds
            watch.positions[(msg.topic, msg.partition)] = msg.offset
            delivery.pending.append(event)

    @app.agent(app.topic(topics.raw), name="ingest")
    async def ingest(stream: faust.StreamT[bytes]) -> None:
        """Validate raw telemetry; dead-letter the bad, forward foreign devices, window."""
        await process(stream, metrics.processing_latency.observe)

    @app.agent(app.topic(topics.by_device), name="ingest_forwarded")
    async def ingest_forwarded(stream: faust.StreamT[bytes]) -> None:
        """Readings of gateway batches, now on their device's partition."""
        await process(stream)

    @app.agent(app.topic(topics.by_district), name="aggregate_districts")
    async def aggregate_districts(stream: faust.StreamT[bytes]) -> None:
        """Closed device windows into district windows (closed by the timer below)."""
        await process(stream)

    @app.agent(app.topic(topics.liveness), name="watch_liveness")
    async def watch_liveness(stream: faust.StreamT[bytes]) -> None:
        """Devices heard, on their family's partition: ends their offline episodes."""
        await process(stream)

    # --- timers: windows close when input goes quiet; liveness; gauges; checkpoints ---
    app.timer(1.0)(timers.close_quiet_windows)
    app.timer(1.0)(timers.flush_heard)
    app.timer(1.0)(timers.detect_offline)
    app.timer(5.0)(timers.refresh_gauges)
    app.timer(settings.state_flush_ms / 1000.0)(timers.checkpoint_state)

    # --- rebalances and shutdown --------------------------------------------------------
    app.on_partitions_revoked.connect(rebalance.on_revoked)  # type: ignore[arg-type]
    app.on_partitions_assigned.connect(rebalance.on_assigned)  # type: ignore[arg-type]
    app.on_before_shutdown.connect(rebalance.on_shutdown)  # type: ignore[arg-type]

    # --- followers (whole on every worker) and /metrics ---------------------------------
    @app.task
    async def follow_registry() -> None:
        await registry.follow()

    @app.task
    async def follow_occupancy() -> None:
        if ruleset.occupancy_metrics:
            await occupancy.load()
            await occupancy.follow()

    @app.task
    async def serve_metrics() -> None:
        serve(metrics, settings.bind, settings.metrics_port)

    async def prepare() -> None:
        if delivery.transactions is not None:
            await delivery.transactions.start()
        await registry.load()
        log.info("registry loaded: %d devices", len(core.registry))

    return prepare


def _unacked_events(stream: faust.StreamT[bytes]) -> AsyncIterator[Any]:
    """The stream's events, acknowledged by the caller (after its checkpoint)."""
    events: AsyncIterator[Any] = cast(faust.Stream[bytes], stream).noack().events()
    return events
