"""The ingest stage: raw messages in; dead letters, forwards and enriched readings out.

No faust here: :class:`Ingest` is driven with plain arguments and fills an
:class:`Outbox`, which the pipeline core (:mod:`streams.core`) turns into output records. Tests
drive it directly, without a network.

Per message: validate (:mod:`streams.stages.validate`); readings whose device belongs to
another partition are forwarded there (a gateway batch mixes devices, and per-device
state must have one owner); the rest are checked against the registry, de-duplicated
on ``seq`` and handed on, enriched.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import orjson

from streams.messages import ForwardedReadings, Source, encode_forwarded
from streams.metrics import Metrics
from streams.stages.deadletter import deadletter_record
from streams.stages.dedup import SeqState, check_seq
from streams.stages.enrich import Device, Registry, enriched_record, unknown_device
from streams.stages.routing import device_partition
from streams.stages.validate import (
    LATE,
    SCHEMA,
    UNKNOWN_DEVICE,
    Limits,
    Reading,
    Reject,
    parse_message,
)
from streams.stages.windows import Closed, DeviceState, add_reading, close_idle, idle_due

S = TypeVar("S")
RAW, FORWARDED = 0, 1  # index of the input in DeviceState.applied


class StateStore(Protocol[S]):
    """Per-key state: :class:`streams.state.DurableMap` in a worker, a dict in tests."""

    def get(self, key: str) -> S | None: ...

    def set(self, key: str, value: S, partition: int) -> None: ...


class DictStore(Generic[S]):
    """A :class:`StateStore` without durability, for tests and tools."""

    def __init__(self) -> None:
        self.data: dict[str, S] = {}

    def get(self, key: str) -> S | None:
        return self.data.get(key)

    def set(self, key: str, value: S, partition: int) -> None:
        self.data[key] = value


@dataclass(slots=True)
class Outbox:
    """What one call produced; the agent sends it and clears it."""

    deadletters: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    forwards: dict[int, list[list[Any]]] = field(default_factory=dict)
    forward_sources: dict[int, Source] = field(default_factory=dict)
    accepted: list[tuple[Reading, Device]] = field(default_factory=list)
    enriched: list[tuple[bytes, bytes, int]] = field(default_factory=list)  # + partition
    # device windows closed: (device, device partition, (start, aggregates))
    closed: list[tuple[Device, int, Closed]] = field(default_factory=list)

    def clear(self) -> None:
        self.closed.clear()
        self.deadletters.clear()
        self.forwards.clear()
        self.forward_sources.clear()
        self.accepted.clear()
        self.enriched.clear()


def encode_device(state: DeviceState) -> bytes:
    return orjson.dumps(state.to_json())


def decode_device(raw: bytes) -> DeviceState:
    return DeviceState.from_json(orjson.loads(raw))


def envelope_bytes(reading: Reading) -> bytes:
    """A reading as a telemetry envelope again (for dead letters of batch readings)."""
    doc: dict[str, Any] = {"device_id": reading.device_id, "ts": reading.ts}
    if reading.seq is not None:
        doc["seq"] = reading.seq
    doc["metrics"] = reading.metrics
    return orjson.dumps(doc)


@dataclass(frozen=True, slots=True)
class WindowConfig:
    size_ms: int = 60_000
    grace_ms: int = 10_000
    idle_ms: int = 10_000


class Ingest:
    def __init__(
        self,
        *,
        limits: Limits,
        registry: Registry,
        states: StateStore[DeviceState],
        metrics: Metrics,
        partitions: int,
        windows: WindowConfig | None = None,
        pass_unknown: bool = False,
        emit_enriched: bool = True,
    ) -> None:
        self.limits = limits
        self.registry = registry
        self.states = states
        self.metrics = metrics
        self.partitions = partitions
        self.windows = windows if windows is not None else WindowConfig()
        self.pass_unknown = pass_unknown
        self.emit_enriched = emit_enriched
        # Devices with open windows, and their partition: what the idle timer visits.
        self.active: dict[str, int] = {}
        # ... and the earliest wall time the idle timer can close one of their windows
        # (none: at the next tick). Earlier, it skips them without reading their state:
        # visiting 100,000 devices every second cost ~0.1 s of each second, and their
        # states may wait encoded (streams.state.DurableMap).
        self.due: dict[str, int] = {}
        # Bound methods and children looked up once: this runs per reading.
        self._inc_in = metrics.readings_in.inc
        self._inc_valid = metrics.readings_valid.inc

    # --- entry points -----------------------------------------------------------------
    def on_raw(self, value: bytes | None, src: Source, now_ms: int, out: Outbox) -> None:
        """One message of ``telemetry.raw``."""
        self.metrics.messages_in.inc()
        readings, rejects, batch = parse_message(value, now_ms, self.limits)
        self._inc_in(len(readings) + len(rejects))
        for reject in rejects:
            self._deadletter(reject, src, now_ms, out)
        if not readings:
            return
        # A single envelope's own bytes are its dead-letter payload; a batch reading's
        # payload is the reading alone, re-serialised.
        whole = None if batch else value
        local: list[Reading] = []
        partitions = self.partitions
        get_device = self.registry.devices.get
        for reading in readings:
            device = get_device(reading.device_id)  # (its id is the cache's key: no copy)
            owner = device_partition(
                reading.device_id if device is None else device.device_id, partitions
            )
            if owner == src.partition:
                local.append(reading)
            else:
                out.forwards.setdefault(owner, []).append(list(reading))
                out.forward_sources.setdefault(owner, src)
        if out.forwards:
            self.metrics.forwarded.inc(sum(len(v) for v in out.forwards.values()))
        self.accept(local, src, src.partition, RAW, src.offset, now_ms, out, whole)

    def on_forwarded(self, value: bytes | None, src: Source, now_ms: int, out: Outbox) -> None:
        """One message of the internal ``telemetry.bydevice`` topic (written by on_raw)."""
        try:
            batch = ForwardedReadings.decode(value)
        except ValueError as exc:  # an internal topic, but still input: never crash
            reject = Reject(SCHEMA, str(exc)[:200], value or b"")
            self._deadletter(reject, src, now_ms, out)
            return
        readings, origin = batch.readings, batch.origin
        # Dead letters name the reading's original message; state goes with this partition.
        self.accept(readings, origin, src.partition, FORWARDED, src.offset, now_ms, out, None)

    # --- the per-device part ------------------------------------------------------------
    def accept(
        self,
        readings: list[Reading],
        src: Source,
        partition: int,
        input_index: int,
        offset: int,
        now_ms: int,
        out: Outbox,
        whole: bytes | None,
    ) -> None:
        """Registry, idempotence, de-duplication, windows and enrichment of readings this
        partition owns. ``input_index`` and ``offset`` say which message they came in."""
        get_device = self.registry.devices.get
        states = self.states
        size, grace = self.windows.size_ms, self.windows.grace_ms
        touched: dict[str, DeviceState] = {}
        for reading in readings:
            device_id = reading.device_id
            device = get_device(device_id)
            if device is None:
                if not self.pass_unknown:
                    payload = whole if whole is not None else envelope_bytes(reading)
                    detail = f"device {device_id!r} is not in the registry"
                    self._deadletter(Reject(UNKNOWN_DEVICE, detail, payload), src, now_ms, out)
                    continue
                device = unknown_device(device_id)
            # The registry's string (interned): the keys of state, `active` and `due` hold
            # no copy of each device's id as parsed from its first reading.
            device_id = device.device_id
            state = touched.get(device_id)
            if state is None:
                state = states.get(device_id)
                if state is None:
                    state = DeviceState()
                elif offset <= state.applied[input_index]:
                    continue  # redelivered after a restart: already in this device's state
                touched[device_id] = state
            if reading.seq is not None:
                seen = SeqState(state.seq_high, state.seq_mask) if state.seq_high >= 0 else None
                verdict = check_seq(seen, reading.seq, reading.ts, state.max_ts)
                if verdict.duplicate:
                    self.metrics.duplicates.inc()
                    continue
                if verdict.reset:
                    self.metrics.seq_resets.inc()
                state.seq_high, state.seq_mask = verdict.state
            late, closed = add_reading(state, reading.ts, reading.metrics, now_ms, size, grace)
            if late:
                payload = whole if whole is not None else envelope_bytes(reading)
                detail = (
                    f"ts {reading.ts} is in a window of {device_id!r} that closed at "
                    f"{state.closed_until} (grace {grace} ms)"
                )
                self._deadletter(Reject(LATE, detail, payload), src, now_ms, out)
                continue
            for window in closed:
                out.closed.append((device, partition, window))
            self._inc_valid()
            out.accepted.append((reading, device))
            if self.emit_enriched:
                out.enriched.append(
                    (device_id.encode(), enriched_record(reading, device), partition)
                )
        active, due = self.active, self.due
        for device_id, state in touched.items():
            state.applied[input_index] = offset
            states.set(device_id, state, partition)
            if state.open:
                active[device_id] = partition
                due[device_id] = self._due(state)
            else:
                active.pop(device_id, None)
                due.pop(device_id, None)

    def tick(
        self,
        now_ms: int,
        out: Outbox,
        since: Mapping[int, int] | None = None,
        busy: frozenset[int] | set[int] = frozenset(),
        since_ms: int = 0,
        observed: Mapping[int, int] | None = None,
        devices: Iterable[str] | None = None,
    ) -> None:
        """The idle timer: close windows of devices that went quiet. Silence counts
        from ``since[partition]`` (default ``since_ms``, the takeover) at the earliest,
        and up to ``observed[partition]`` at the latest (the broker's latest answer for
        that input: later silence may be an outage); partitions in ``busy`` have input
        not yet read, or none readable at all, so none of their devices is quiet now.

        ``devices``: some of ``idle_candidates`` (default: all of them). The worker
        closes them in chunks and hands each chunk's outputs to the producer before the
        next, so closing 100,000 devices' windows at once does not hold all their
        records (~50 MB measured). Devices no longer active are skipped."""
        if devices is None:
            devices = self.idle_candidates(now_ms, busy)
        since = since or {}
        observed = observed or {}
        cfg = self.windows
        get_device = self.registry.devices.get
        active = self.active
        due = self.due
        for device_id in devices:
            partition = active.get(device_id)
            if partition is None or partition in busy or due.get(device_id, 0) > now_ms:
                continue
            state = self.states.get(device_id)
            if state is None:
                del active[device_id]
                due.pop(device_id, None)
                continue
            quiet_from = since.get(partition, since_ms)
            until = min(now_ms, observed.get(partition, now_ms))
            closed = close_idle(state, until, cfg.size_ms, cfg.grace_ms, cfg.idle_ms, quiet_from)
            if not closed:
                if device_id not in due:  # (loaded state: not known until now)
                    due[device_id] = self._due(state)
                continue  # (else held back by `since` or `observed`: again next tick)
            device = get_device(device_id) or unknown_device(device_id)
            for window in closed:
                out.closed.append((device, partition, window))
            self.states.set(device_id, state, partition)
            if state.open:
                due[device_id] = self._due(state)
            else:
                del active[device_id]
                due.pop(device_id, None)

    def idle_candidates(
        self, now_ms: int, busy: frozenset[int] | set[int] = frozenset()
    ) -> list[str]:
        """Devices whose windows the idle timer may close now (without reading their
        state), for ``tick`` in chunks."""
        due = self.due
        return [d for d, p in self.active.items() if p not in busy and due.get(d, 0) <= now_ms]

    def _due(self, state: DeviceState) -> int:
        cfg = self.windows
        return idle_due(state, cfg.size_ms, cfg.grace_ms, cfg.idle_ms)

    def forward_value(self, readings: list[list[Any]], src: Source) -> bytes:
        """A :class:`streams.messages.ForwardedReadings` record."""
        return encode_forwarded(src, readings)

    def _deadletter(self, reject: Reject, src: Source, now_ms: int, out: Outbox) -> None:
        self.metrics.deadletter(reject.reason)
        record = deadletter_record(reject, src.topic, src.partition, src.offset, src.key, now_ms)
        out.deadletters.append((src.key, record))
