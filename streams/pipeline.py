"""The pipeline's topology: topics, tables and agents, wired onto a faust app.

It reads top to bottom in the order data flows. The logic of each stage lives in pure
modules (:mod:`streams.ingest` and what it uses); the agents here only move bytes
between Kafka and those stages.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple, cast

import faust
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams.alerts import Alerting, AlertState, decode_alerts, encode_alerts
from streams.districts import (
    DistrictOutbox,
    Districts,
    decode_district,
    district_message,
    encode_district,
)
from streams.enrich import UNKNOWN_KIND, Registry
from streams.ingest import (
    Ingest,
    Outbox,
    Source,
    WindowConfig,
    decode_device,
    encode_device,
)
from streams.liveness import (
    SCOPE_RULE,
    Family,
    Liveness,
    decode_family,
    district_key,
    encode_family,
    root_of,
)
from streams.metrics import Metrics, serve
from streams.outputs import (
    OUTPUT_BATCH_BYTES,
    OUTPUT_LINGER_S,
    OUTPUT_REQUEST_BYTES,
    Linger,
    Outputs,
    Record,
)
from streams.routing import device_partition, key_partition
from streams.rules import RuleSet, load_rules
from streams.security import client_kwargs
from streams.settings import EXACTLY_ONCE, Settings
from streams.state import DurableMap, Write, compact, load_partitions, read_to_end
from streams.topics import (
    ALERTS,
    DEADLETTER,
    DEVICES,
    LIVENESS_BY_ROOT,
    METRICS_DEVICE,
    METRICS_DISTRICT,
    OCCUPANCY,
    STATE_ALERTS,
    STATE_DEVICE,
    STATE_DISTRICT,
    STATE_LIVENESS,
    TELEMETRY_BY_DEVICE,
    TELEMETRY_ENRICHED,
    TELEMETRY_RAW,
    WINDOWS_BY_DISTRICT,
    topic_name,
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
    prefix = settings.topic_prefix

    def internal(base: str) -> str:
        return topic_name(prefix, base, settings.app_id)

    window_ms = settings.window_s * 1000
    district_ms = settings.district_window_s * 1000
    grace_ms = int(settings.grace_s * 1000)

    # --- topics ---------------------------------------------------------------------
    raw_topic = app.topic(prefix + TELEMETRY_RAW)
    by_device_topic = app.topic(internal(TELEMETRY_BY_DEVICE))
    by_district_topic = app.topic(internal(WINDOWS_BY_DISTRICT))
    liveness_topic = app.topic(internal(LIVENESS_BY_ROOT))
    # Topics only written (by name: see `send` below)
    deadletter_topic = prefix + DEADLETTER
    enriched_topic = prefix + TELEMETRY_ENRICHED
    device_windows_topic = prefix + METRICS_DEVICE
    district_windows_topic = prefix + METRICS_DISTRICT
    alerts_topic = prefix + ALERTS
    occupancy_topic = internal(OCCUPANCY)
    by_device_name = internal(TELEMETRY_BY_DEVICE)
    by_district_name = internal(WINDOWS_BY_DISTRICT)
    liveness_name = internal(LIVENESS_BY_ROOT)
    devices_topic_name = prefix + DEVICES

    # --- state: per device and per district, on our own compacted changelogs -----------
    # (not faust tables: see streams/state.py for why)
    budget = settings.state_cache_keys
    device_states: DurableMap[DeviceState] = DurableMap(
        internal(STATE_DEVICE), encode_device, decode_device, internal(STATE_DEVICE), budget
    )
    district_states: DurableMap[DistrictState] = DurableMap(
        internal(STATE_DISTRICT),
        encode_district,
        decode_district,
        internal(STATE_DISTRICT),
        budget,
    )
    alert_states: DurableMap[AlertState] = DurableMap(
        internal(STATE_ALERTS), encode_alerts, decode_alerts, internal(STATE_ALERTS), budget
    )
    families: DurableMap[Family] = DurableMap(
        internal(STATE_LIVENESS), encode_family, decode_family, internal(STATE_LIVENESS), budget
    )
    maps: list[DurableMap[Any]] = [device_states, district_states, alert_states, families]
    # Set once the state of the current assignment is loaded; agents and timers wait.
    ready = asyncio.Event()
    owned_since = [0]  # wall time of the latest assignment (liveness counts from there)
    registry = Registry()
    # root -> wall time before which judging its family finds nothing (Liveness.next_check);
    # dropped when the family hears from a device, cleared when the registry changes.
    check_due: dict[str, int] = {}

    def registry_changed() -> None:
        metrics.registry_devices.set(len(registry))
        check_due.clear()  # heartbeats may have changed: every family is judged again

    follower = Follower(
        settings,
        devices_topic_name,
        registry.apply,
        on_error=metrics.registry_errors.inc,
        after=registry_changed,
    )
    # Other devices' latest occupancy values (a classroom's access point's clients), from
    # every partition: what rules with an `occupancy` condition read.
    latest: dict[str, dict[str, float]] = {}
    occupancy_metrics = ruleset.occupancy_metrics
    occupancy_follower = Follower(
        settings,
        internal(OCCUPANCY),
        lambda key, value: _apply_latest(latest, key, value),
    )

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
    alerting = Alerting(ruleset, alert_states, settings.partitions, latest)
    liveness = Liveness(registry, ruleset.offline_k, ruleset.offline_severity)
    # Devices heard since the last flush: {device: (arrival, ts)}. Their roots and
    # partitions are looked up at the flush, once per device, not once per reading.
    heard: dict[str, tuple[int, int]] = {}
    family_partition: dict[str, int] = {}  # the families this worker owns
    offline_roots: set[str] = set()  # families with an offline device (for the gauges)
    newest = [0]  # the newest event time accepted (for the event-time lag)
    positions: dict[tuple[str, int], int] = {}  # the last offset processed, per input
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
    #
    # Outputs go before the state that records them (a closed window, a fired alert):
    # a checkpoint waits for the outputs in flight, then writes the state. A crash in
    # between emits them again after the restart, identical (windows: consumers
    # de-duplicate on device_id + window_start; alerts: the same alert_id); the other
    # order could lose them. Nothing on the per-message path waits for Kafka.
    pending: list[Any] = []
    inflight: list[Awaitable[Any]] = []
    checkpoint_lock = asyncio.Lock()
    # Held while a stage changes state and queues its outputs, and while a checkpoint
    # takes its snapshot: a snapshot never holds a change whose outputs are not queued.
    step = asyncio.Lock()

    # Exactly-once: every output, state record and input offset of a checkpoint is one
    # transaction of this worker's own transactional producer (started by `prepare`).
    transactions = Transactions(settings) if settings.processing_guarantee == EXACTLY_ONCE else None

    # Outputs wait in `outputs` (a list append each) and leave in one batch per
    # partition: at the latest OUTPUT_LINGER_S after the first, or at a checkpoint.
    # Straight to aiokafka, not through faust's Topic.send or aiokafka's per-record
    # send: their layers cost more than the rest of a reading's path (profiled).
    outputs = Outputs(owner_partitions=settings.partitions)

    def producer() -> Any:
        if transactions is not None:
            return transactions.producer
        return _aiokafka_producer(app)

    async def flush_outputs() -> None:
        """Under `step`: what is buffered goes to the producer; its futures join
        `inflight`, which the next checkpoint awaits before acknowledging input."""
        taken = outputs.take()
        if not taken:
            return
        if transactions is not None:
            await transactions.ensure_open()
        inflight.extend(await outputs.flush(producer(), taken))

    async def linger_flush() -> None:
        try:
            async with step:
                await flush_outputs()
        except Exception as exc:  # records taken but not handed over: start again
            await checkpoint_failed(exc)

    linger = Linger(OUTPUT_LINGER_S, linger_flush)

    def send(
        topic: str,
        key: bytes | None,
        value: bytes,
        partition: int | None = None,
        owner: int | None = None,
    ) -> None:
        """``owner``: the partition of a device-keyed record's device (Outputs.add)."""
        # compact: outputs wait for the flush, and a burst (the idle timer closing the
        # windows of 100,000 devices at once) held 4 KiB per record of orjson's buffers
        # (+400 MB, measured); the copy costs ~0.2 us a record.
        outputs.add(topic, key, compact(value), partition, owner)
        linger.arm()

    def owner_of(device_id: str) -> int:
        return device_partition(device_id, settings.partitions)

    async def send_writes(writes: list[Write]) -> list[Awaitable[Any]]:
        records: dict[str, list[Record]] = {}
        for w in writes:
            records.setdefault(w.sink, []).append((w.key, w.value, w.partition))
        return await outputs.flush(producer(), records)

    async def checkpoint() -> None:
        if transactions is not None:
            await checkpoint_transaction(transactions)
            return
        async with checkpoint_lock:
            async with step:  # one instant: events, the state they made, their outputs
                events = pending[:]
                pending.clear()
                writes = [w for m in maps for w in m.collect()]
                await flush_outputs()
                sent = inflight[:]
                inflight.clear()
            if sent:
                await asyncio.gather(*sent)
            # Under checkpoint_lock: an older encoding of a key never lands after a newer
            # one (the changelog's last record per key is what a restart restores).
            futures = await send_writes(writes)
            if futures:
                await asyncio.gather(*futures)
            for event in events:
                event.ack()

    async def checkpoint_transaction(txn: Transactions) -> None:
        # Under `step` throughout: nothing may join the transaction after the snapshot
        # (an output whose input offset is not in it would be committed without it).
        # Processing pauses for the commit, a few ms per STATE_FLUSH_MS.
        async with checkpoint_lock, step:
            events = pending[:]
            pending.clear()
            writes = [w for m in maps for w in m.collect()]
            await flush_outputs()
            if writes:
                await txn.ensure_open()
                await send_writes(writes)
            offsets: dict[TopicPartition, int] = {}
            for event in events:
                msg = event.message
                tp = TopicPartition(msg.topic, msg.partition)
                offsets[tp] = max(offsets.get(tp, 0), msg.offset + 1)
            await txn.commit(offsets, settings.app_id)
            inflight.clear()
        # faust commits these offsets again when it sees them acknowledged: the same
        # values, harmless; the transaction already holds them.
        for event in events:
            event.ack()

    async def abandon(txn: Transactions) -> None:
        async with checkpoint_lock, step:
            pending.clear()  # never acknowledged: processed again by the new owner
            outputs.take()
            inflight.clear()
            for m in maps:
                m.collect()  # dropped: the changelog, not this memory, is the truth now
            await txn.abort()
        log.warning("exactly-once: group membership lost, open transaction aborted")

    background: set[asyncio.Task[None]] = set()

    def start_checkpoint() -> None:
        if not checkpoint_lock.locked() and not background:
            task = asyncio.ensure_future(checkpoint())
            background.add(task)
            task.add_done_callback(_finished)

    def _finished(task: asyncio.Task[None]) -> None:
        background.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            crash = asyncio.ensure_future(checkpoint_failed(exc))
            background.add(crash)

    async def checkpoint_failed(exc: BaseException) -> None:
        # Kafka refused an output or a state record for good (retriable errors are
        # retried by the producer, for as long as the broker is away). The events of
        # that checkpoint are neither acknowledged nor resendable here: stop, so that
        # the input is read again from the committed offsets (by a restarted worker or
        # the others). Going on would leave a gap that blocks commits, or lose outputs.
        # Not a clean stop: that would run another checkpoint on the way out.
        log.critical(
            "checkpoint failed (%r): stopping the worker so its uncommitted input is "
            "processed again; nothing acknowledged is lost",
            exc,
        )
        logging.shutdown()
        os._exit(EXIT_CHECKPOINT_FAILED)

    app.sensors.add(_CheckpointOnCommit(start_checkpoint))

    def send_alerts(records: list[dict[str, Any]]) -> None:
        for record in records:
            device_id = record["device_id"]
            send(alerts_topic, device_id.encode(), orjson.dumps(record), None, owner_of(device_id))
            metrics.alert_event(record["rule"], record["severity"], record["status"])

    def drain(out: Outbox) -> None:
        """Send what a stage produced."""
        if out.accepted:
            # Rules run on each reading as it is accepted: an alert leaves with it.
            fired: list[dict[str, Any]] = []
            alerting.on_accepted(out.accepted, fired)
            send_alerts(fired)
            if occupancy_metrics:
                for reading, device in out.accepted:
                    values = {
                        m: v for m in occupancy_metrics if (v := reading.metrics.get(m)) is not None
                    }
                    if values:
                        owner = owner_of(device.device_id)
                        value = orjson.dumps(values)
                        send(occupancy_topic, device.device_id.encode(), value, None, owner)
            newest[0] = max(newest[0], max(r.ts for r, _ in out.accepted))
            if ruleset.offline_enabled:
                now = now_ms()
                for reading, device in out.accepted:
                    if device.kind != UNKNOWN_KIND:
                        heard[device.device_id] = (now, reading.ts)
        for key, value in out.deadletters:
            send(deadletter_topic, key, value)
        for partition, readings in out.forwards.items():
            value = ingest_stage.forward_value(readings, out.forward_sources[partition])
            send(by_device_name, None, value, partition)
        for key, value, owner in out.enriched:
            send(enriched_topic, key, value, None, owner)
        if out.closed:
            for device, owner, window in out.closed:
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
                value = orjson.dumps(record)
                send(device_windows_topic, device.device_id.encode(), value, None, owner)
                metrics.windows_emitted_device.inc()
                message = district_message(device, window, window_ms)
                if message is not None:
                    send(by_district_name, message[0], message[1])
        out.clear()

    # --- agents ---------------------------------------------------------------------
    async def ingest_events(
        stream: faust.StreamT[bytes],
        stage: Callable[[bytes | None, Source, int, Outbox], None],
        observe: Callable[[float], None] | None = None,
    ) -> None:
        out = Outbox()
        async for event in _unacked_events(stream):
            if not ready.is_set():
                await ready.wait()
            msg = event.message
            src = Source(msg.topic, msg.partition, msg.offset, msg.key)
            async with step:
                stage(msg.value, src, now_ms(), out)
                drain(out)
            if observe is not None and msg.timestamp:
                observe(time.time() - msg.timestamp)  # faust gives the timestamp in seconds
            positions[(msg.topic, msg.partition)] = msg.offset
            pending.append(event)

    @app.agent(raw_topic, name="ingest")
    async def ingest(stream: faust.StreamT[bytes]) -> None:
        """Validate raw telemetry; dead-letter the bad, forward foreign devices, window."""
        await ingest_events(stream, ingest_stage.on_raw, metrics.processing_latency.observe)

    @app.agent(by_device_topic, name="ingest_forwarded")
    async def ingest_forwarded(stream: faust.StreamT[bytes]) -> None:
        """Readings of gateway batches, now on their device's partition."""
        await ingest_events(stream, ingest_stage.on_forwarded)

    @app.agent(by_district_topic, name="aggregate_districts")
    async def aggregate_districts(stream: faust.StreamT[bytes]) -> None:
        """Closed device windows into district windows (closed by the timer below)."""
        async for event in _unacked_events(stream):
            if not ready.is_set():
                await ready.wait()
            msg = event.message
            if msg.key is not None and msg.value is not None:
                async with step:
                    district_stage.on_device_window(
                        msg.key, msg.value, msg.partition, msg.offset, now_ms()
                    )
            pending.append(event)

    # --- timers: windows close when input goes quiet -----------------------------------
    # Silence means "nothing arrived while the input was readable". Per device input
    # (topic, partition): judged only when everything known of it is processed (a
    # backlog is not silence, nor a reading queued for the agent behind a stall), and
    # not while it is cut off from the broker (no fetch answer: a broker or network
    # outage is not silence either; once it answers again, devices get a whole idle
    # period from then).
    input_down: set[tuple[str, int]] = set()
    quiet_from: dict[int, int] = {}  # device partition -> silence counts from here

    def quiet_state(now: int) -> tuple[dict[int, int], dict[int, int], set[int]]:
        """For the idle timer, per device partition: since when silence counts, up to
        when it has been observed (the broker's latest fetch answer: silence after that
        is not known yet), and the partitions whose devices cannot be judged now."""
        consumer = app.consumer
        busy: set[int] = set()
        observed: dict[int, int] = {}
        for tp in consumer.assignment():
            key = (tp.topic, tp.partition)
            if tp.topic not in device_inputs:
                continue
            view = _input_view(app, tp)
            last = positions.get(key)
            if view is None:  # faust's internals moved: offsets only, takeover time
                high = consumer.highwater(tp)
                if high is not None and last is not None and high - last - 1 > 0:
                    busy.add(tp.partition)
                continue
            if view.fetched_at is None:  # the broker has not answered since the takeover
                busy.add(tp.partition)
                continue
            observed[tp.partition] = min(view.fetched_at, observed.get(tp.partition, now))
            if now - view.fetched_at > STALE_FETCH_MS:
                input_down.add(key)
                busy.add(tp.partition)
                continue
            if key in input_down:
                input_down.discard(key)
                quiet_from[tp.partition] = max(quiet_from.get(tp.partition, 0), now)
            # Read to the end, now: everything stable fetched (transaction markers and
            # aborted records move the fetch position, never reach the agent) and
            # everything handed to the agent processed. Checked at every tick: once was
            # not enough, a reading fetched during a stall and still queued for the
            # agent counted as silence up to its fetch (the network battery lost
            # readings as late to it).
            if not view.caught_up(last):
                busy.add(tp.partition)
        since = {p: max(t, owned_since[0]) for p, t in quiet_from.items()}
        return since, observed, busy

    @app.timer(1.0)
    async def close_quiet_windows() -> None:
        if not ready.is_set():
            return  # a rebalance is under way
        # An exception in a faust timer stops the whole worker: log it and go on.
        try:
            # `step` is held throughout, as for a checkpoint: nothing else changes state
            # while windows close, even while a chunk's records wait for the producer.
            # (Letting go of it between chunks, so readings flowed meanwhile, lost two
            # readings in two of three fault-battery CI runs, cause not found: not worth it.)
            async with step:
                candidates: list[str] | None = None
                done = 0
                while candidates is None or done < len(candidates):
                    # Again at every chunk: a rebalance clears `ready` (then waits for
                    # `step`); its partitions' state is written by its checkpoint.
                    if not ready.is_set():
                        return  # (the next tick goes on)
                    out = Outbox()
                    now = now_ms()
                    # Again at every chunk too: input fetched while a chunk waited for
                    # the producer makes its partition busy (its readings wait for
                    # `step`: their devices are not quiet).
                    since, observed, busy = quiet_state(now)
                    if candidates is None:
                        candidates = ingest_stage.idle_candidates(now, busy)
                    chunk = candidates[done : done + IDLE_CLOSE_CHUNK]
                    done += len(chunk)
                    ingest_stage.tick(now, out, since, busy, owned_since[0], observed, chunk)
                    drain(out)
                    if done < len(candidates):
                        # This chunk's records go to the producer before the next chunk
                        # closes: 100,000 devices closing at once never hold all their
                        # records in memory (~50 MB, measured).
                        try:
                            await flush_outputs()
                        except Exception as exc:  # taken, not handed over: start again
                            await checkpoint_failed(exc)
                        continue
                    district_out = DistrictOutbox()
                    if not input_down:  # (device windows may be held up: no timeouts now)
                        district_stage.tick(now, district_out)
                    for key, value in district_out.records:
                        send(district_windows_topic, key, value)
                        metrics.district_window(orjson.loads(value))
        except Exception:
            log.exception("closing windows failed; retrying at the next tick")

    # --- liveness: offline devices, correlated by their root (streams/liveness.py) -------
    def family_home(root: str) -> int:
        """The liveness partition of a family: its root's district's, so that one owner
        sees a whole district go silent (cached per district name)."""
        return device_partition(district_key(registry, root), settings.partitions)

    @app.timer(1.0)
    async def flush_heard() -> None:
        # "Heard" notes are batched per second and partition: one message per partition,
        # not one per reading. A crash loses at most this second's notes, which only
        # makes a device look silent a second longer.
        if not heard:
            return
        batches: dict[int, list[list[Any]]] = {}
        for device_id, (arrival, ts) in heard.items():
            root = root_of(registry, device_id)
            part = family_home(root)
            batches.setdefault(part, []).append([root, device_id, arrival, ts])
        heard.clear()
        try:
            async with step:  # (exactly-once: never in the middle of a commit)
                for part, notes in batches.items():
                    send(liveness_name, None, orjson.dumps(notes), part)
        except Exception:
            log.exception("sending liveness notes failed")

    @app.agent(liveness_topic, name="watch_liveness")
    async def watch_liveness(stream: faust.StreamT[bytes]) -> None:
        """Devices heard, on their family's partition: ends their offline episodes."""
        async for event in _unacked_events(stream):
            if not ready.is_set():
                await ready.wait()
            msg = event.message
            async with step:
                fired: list[dict[str, Any]] = []
                try:
                    for root, device_id, arrival, ts in orjson.loads(msg.value):
                        if family_home(root) != msg.partition:
                            continue  # routed before an upgrade or a registry change
                        family = families.get(root)
                        if family is None:
                            family = Family()
                            liveness.track(root)
                        liveness.heard(family, device_id, int(arrival), int(ts), fired)
                        families.set(root, family, msg.partition)
                        family_partition[root] = msg.partition
                        check_due.pop(root, None)
                        if not liveness.any_offline(family):
                            offline_roots.discard(root)
                except Exception:  # internal topic, but input all the same: never crash
                    metrics.liveness_input_errors.inc()
                    log.warning("unreadable liveness notes at %d@%d", msg.partition, msg.offset)
                send_alerts(fired)
            pending.append(event)

    @app.timer(1.0)
    async def detect_offline() -> None:
        if not ready.is_set() or not ruleset.offline_enabled:
            return
        try:
            async with step:
                now = now_ms()
                fired: list[dict[str, Any]] = []
                since = owned_since[0]
                # Peeked once a round: a cold family decodes to a new object each time,
                # and the one the round changes is the one to write.
                judged: dict[str, Family] = {}

                def peek(root: str) -> Family | None:
                    family = judged.get(root)
                    if family is None and (family := families.peek(root)) is not None:
                        judged[root] = family
                    return family

                judge = liveness.round(now, since, peek)
                for root in family_partition:
                    if check_due.get(root, 0) > now:
                        continue
                    family = judge.peek(root)
                    if family is not None:
                        judge.family(root, family, fired)
                for root in judge.finish(fired):
                    family = judged[root]
                    families.set(root, family, family_partition[root])
                    if liveness.any_offline(family):
                        offline_roots.add(root)
                    else:
                        offline_roots.discard(root)
                for root, family in judged.items():
                    check_due[root] = liveness.next_check(family, since)
                send_alerts(fired)
        except Exception:
            log.exception("offline detection failed; retrying at the next tick")

    # --- gauges, refreshed on the event loop (the scrape thread only reads them) ----------
    @app.timer(5.0)
    async def refresh_gauges() -> None:
        if not ready.is_set():
            return
        try:
            if newest[0]:
                metrics.event_time_lag.set(max(0.0, (now_ms() - newest[0]) / 1000))
            consumer = app.consumer
            for tp in consumer.assignment():
                last = positions.get((tp.topic, tp.partition))
                high = consumer.highwater(tp)
                if last is not None and high is not None:
                    lag = max(0, high - last - 1)
                    metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(lag)
            episodes: dict[tuple[str, str, str], int] = {}
            for device_id in list(alerting.with_episodes):
                state = alert_states.peek(device_id)
                if state is None:
                    continue
                where = registry.devices.get(device_id)
                district = where.district if where is not None else UNKNOWN_KIND
                for episode in state.episodes.values():
                    k = (episode.rule, episode.severity, district)
                    episodes[k] = episodes.get(k, 0) + 1
            offline: dict[tuple[str, str], int] = {}
            for root in list(offline_roots):
                family = families.peek(root)
                if family is None:
                    continue
                for device_id, seen in family.devices.items():
                    device = registry.devices.get(device_id)
                    if seen.offline_since < 0 or device is None:
                        continue
                    if seen.alert_id:
                        k = ("device_offline", ruleset.offline_severity, device.district)
                        episodes[k] = episodes.get(k, 0) + 1
                    d = (device.district, device.kind)
                    offline[d] = offline.get(d, 0) + 1
            for district in liveness.scopes:  # open district_silent episodes
                k = (SCOPE_RULE, liveness.scope_severity, district)
                episodes[k] = episodes.get(k, 0) + 1
            metrics.episodes_active.clear()
            for (rule, severity, district), n in episodes.items():
                metrics.episodes_active.labels(rule, severity, district).set(n)
            metrics.district_offline.clear()
            for (district, kind), n in offline.items():
                metrics.district_offline.labels(district, kind).set(n)
        except Exception:
            log.exception("refreshing gauges failed")

    @app.timer(settings.state_flush_ms / 1000.0)
    async def checkpoint_state() -> None:
        try:
            await checkpoint()
        except Exception as exc:
            await checkpoint_failed(exc)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(sender: Any, revoked: set[Any], **kwargs: Any) -> None:
        # Whatever changed is written before another worker may take the partitions.
        # (faust has stopped the flow and waited for every event in progress.)
        ready.clear()
        if transactions is not None and _lost_membership(app):
            # This worker's session expired (cut off from the broker): its partitions
            # may already be another worker's, which processes their input again. Its
            # open transaction must not commit (duplicates, offsets moved back).
            await abandon(transactions)
        else:
            await checkpoint()
        ingest_stage.active.clear()
        ingest_stage.due.clear()
        district_stage.active.clear()
        positions.clear()
        metrics.forget_partitions()

    device_inputs = {prefix + TELEMETRY_RAW, internal(TELEMETRY_BY_DEVICE)}
    district_inputs = {internal(WINDOWS_BY_DISTRICT)}

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def on_assigned(sender: Any, assigned: set[Any], **kwargs: Any) -> None:
        # The state of exactly the assigned partitions, read from the changelogs, before
        # any agent or timer touches it: state partition p belongs to input partition p.
        ready.clear()
        await checkpoint()
        started = time.monotonic()
        owned_devices = {tp.partition for tp in assigned if tp.topic in device_inputs}
        owned_districts = {tp.partition for tp in assigned if tp.topic in district_inputs}
        owned_families = {tp.partition for tp in assigned if tp.topic == liveness_name}
        owned = [owned_devices, owned_districts, owned_devices, owned_families]
        loaded = await asyncio.gather(
            *(load_partitions(settings, m.topic, p) for m, p in zip(maps, owned, strict=True))
        )
        family_partition.clear()
        check_due.clear()
        for m, records in zip(maps, loaded, strict=True):
            partition_of = m.replace(records)
            if m is families:
                family_partition.update(partition_of)
        # Families kept where an earlier version routed them (by root, not district):
        # their notes go elsewhere now, so they would only go silent here.
        for root, part in list(family_partition.items()):
            if family_home(root) != part:
                del family_partition[root]
                families.forget(root)
        loaded_families = dict(families.items())  # (decoded once, for both uses)
        liveness.restore(loaded_families)
        # Of the records as loaded (the changelog's), before anything decodes them
        digest = state_digest({k.encode(): v for k, v in device_states.cold.items()})
        input_down.clear()
        quiet_from.clear()
        owned_since[0] = now_ms()
        metrics.rebalances.inc()
        metrics.partitions_owned.set(len(owned_devices))
        # Open windows in the loaded state are what the idle timer must visit.
        ingest_stage.active.clear()
        ingest_stage.due.clear()
        district_stage.active.clear()
        for key, state in device_states.items():
            if state.open:
                ingest_stage.active[key] = device_partition(key, settings.partitions)
        for key, dstate in district_states.items():
            if dstate.open:
                district_stage.active[key] = key_partition(key.encode(), settings.partitions)
        # What the gauges count, from the loaded state (decoded once, here)
        alerting.with_episodes = {k for k, a in alert_states.items() if a.episodes}
        offline_roots.clear()
        offline_roots.update(k for k, f in loaded_families.items() if liveness.any_offline(f))
        log.info(
            "state loaded in %.2f s: %d devices (partitions %s, digest %s), "
            "%d districts (partitions %s)",
            time.monotonic() - started,
            len(device_states),
            sorted(owned_devices),
            digest,
            len(district_states),
            sorted(owned_districts),
        )
        ready.set()

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def on_shutdown(sender: Any, **kwargs: Any) -> None:
        try:
            await checkpoint()  # before faust stops the producer
        finally:
            linger.cancel()
            if transactions is not None:
                await transactions.stop()

    # --- the device registry, whole on every worker ----------------------------------
    @app.task
    async def follow_registry() -> None:
        await follower.follow()

    @app.task
    async def follow_occupancy() -> None:
        if occupancy_metrics:
            await occupancy_follower.load()
            await occupancy_follower.follow()

    @app.task
    async def serve_metrics() -> None:
        serve(metrics, settings.bind, settings.metrics_port)

    async def prepare() -> None:
        if transactions is not None:
            # Fences this instance's previous incarnation and aborts its open
            # transaction before anything is read.
            await transactions.start()
        await follower.load()
        log.info("registry loaded: %d devices", len(registry))

    return prepare


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
        # (aiokafka clients are made inside the event loop that runs them)
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
        if not self.open:
            await self.producer.begin_transaction()
            self.open = True
        if offsets:
            await self.producer.send_offsets_to_transaction(offsets, group_id)
        await self.producer.commit_transaction()
        self.open = False


def _aiokafka_producer(app: faust.App) -> AIOKafkaProducer:
    """faust's own aiokafka producer (started with the app). Not public API (pinned
    versions, see pyproject): it fails loudly if faust's internals move."""
    producer: AIOKafkaProducer = app.producer._ensure_producer()  # type: ignore[attr-defined]
    return producer


# A checkpoint Kafka refused for good (see checkpoint_failed): EX_SOFTWARE.
EXIT_CHECKPOINT_FAILED = 70

# faust's consumer fetches with a 1.5 s long poll: a partition whose latest fetch
# answer is older than this is cut off from the broker.
STALE_FETCH_MS = 5_000

# The idle timer closes windows this many devices at a time, handing each chunk's
# records to the producer before the next (see close_quiet_windows).
IDLE_CLOSE_CHUNK = 2_000


def _lost_membership(app: faust.App) -> bool:
    """True when the group coordinator has forgotten this worker (its session expired):
    aiokafka resets the member id before it rejoins and revokes. Not public API: False
    when it cannot be had (the transaction then commits as in a normal rebalance)."""
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


def _input_view(app: faust.App, tp: Any) -> InputView | None:
    """The consumer's view of ``tp``: aiokafka's fetch state inside faust's consumer
    thread and faust's read offset. Not public API (pinned versions, see pyproject):
    None when it cannot be had, and the idle timer falls back to offsets alone."""
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


def state_digest(stored: Mapping[bytes, bytes]) -> str:
    """A short digest of a state store's records (key order does not matter): lets an
    operator or a test compare the state a worker restored with its changelog."""
    h = hashlib.sha256()
    for key in sorted(stored):
        h.update(len(key).to_bytes(4, "big") + key)
        value = stored[key]
        h.update(len(value).to_bytes(4, "big") + value)
    return h.hexdigest()[:16]


def _apply_latest(
    latest: dict[str, dict[str, float]], key: bytes | None, value: bytes | None
) -> str | None:
    """One record of the occupancy topic: a device's latest occupancy values."""
    if key is None:
        return "no key"
    if value is None:
        latest.pop(key.decode(errors="replace"), None)
        return None
    try:
        doc = orjson.loads(value)
        latest[key.decode()] = {str(k): float(v) for k, v in doc.items()}
    except (
        orjson.JSONDecodeError,
        AttributeError,
        TypeError,
        ValueError,
        UnicodeDecodeError,
    ) as exc:
        return f"unreadable: {exc!r}"
    return None


def _unacked_events(stream: faust.StreamT[bytes]) -> AsyncIterator[Any]:
    """The stream's events, acknowledged by the caller (after its checkpoint)."""
    events: AsyncIterator[Any] = cast(faust.Stream[bytes], stream).noack().events()
    return events


class Follower:
    """A compacted topic, read whole by every worker, then followed.

    A consumer without a group, assigned every partition: each worker needs every
    record, and nothing about this topic should be committed. :meth:`load` reads it to
    the end *before* the worker joins its group (telemetry never waits on, or is
    dead-lettered for, a registry still loading); :meth:`follow` applies what comes
    later. ``apply`` takes one record and returns a problem to log, or None.
    """

    def __init__(
        self,
        settings: Settings,
        topic: str,
        apply: Callable[[bytes | None, bytes | None], str | None],
        on_error: Callable[[], None] | None = None,
        after: Callable[[], None] | None = None,
    ):
        self.settings = settings
        self.topic = topic
        self.apply = apply
        self.on_error = on_error
        self.after = after
        self.positions: dict[TopicPartition, int] = {}

    def _consumer(self) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            **client_kwargs(self.settings),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",  # occupancy is written in transactions
        )

    def _apply(self, tp: TopicPartition, records: list[Any]) -> None:
        for record in records:
            problem = self.apply(record.key, record.value)
            if problem is not None:
                if self.on_error is not None:
                    self.on_error()
                log.warning(
                    "%s %d@%d ignored: %s", self.topic, tp.partition, record.offset, problem
                )
        if records:
            self.positions[tp] = records[-1].offset + 1
        if self.after is not None:
            self.after()

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
            self.positions = {tp: 0 for tp in tps}
            await read_to_end(consumer, tps, self._apply)
            for tp in tps:
                self.positions[tp] = await consumer.position(tp)
        finally:
            await consumer.stop()

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
