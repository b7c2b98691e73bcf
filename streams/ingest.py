"""The ingest stage: raw messages in; dead letters, forwards and enriched readings out.

No faust here: :class:`Ingest` is driven with plain arguments and fills an
:class:`Outbox`, which the agents in :mod:`streams.pipeline` drain to Kafka. Tests
drive it directly, without a network.

Per message: validate (:mod:`streams.validate`); readings whose device belongs to
another partition are forwarded there (a gateway batch mixes devices, and per-device
state must have one owner); the rest are checked against the registry, de-duplicated
on ``seq`` and handed on, enriched.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from streams.deadletter import deadletter_record
from streams.dedup import WIDTH, SeqState, check_seq
from streams.enrich import Device, Registry, enriched_record, unknown_device
from streams.metrics import Metrics
from streams.routing import device_partition
from streams.validate import (
    SCHEMA,
    UNKNOWN_DEVICE,
    Limits,
    Reading,
    Reject,
    parse_message,
)


class SeqStore(Protocol):
    def get(self, key: str) -> SeqState | None: ...

    def set(self, key: str, value: SeqState, partition: int) -> None: ...


class DictSeqStore:
    """A :class:`SeqStore` without durability, for tests and tools."""

    def __init__(self) -> None:
        self.data: dict[str, SeqState] = {}

    def get(self, key: str) -> SeqState | None:
        return self.data.get(key)

    def set(self, key: str, value: SeqState, partition: int) -> None:
        self.data[key] = value


@dataclass(slots=True)
class Source:
    """Where a reading came from, for its dead-letter record."""

    topic: str
    partition: int
    offset: int
    key: bytes | None


@dataclass(slots=True)
class Outbox:
    """What one call produced; the agent sends it and clears it."""

    deadletters: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    forwards: dict[int, list[list[Any]]] = field(default_factory=dict)
    forward_sources: dict[int, Source] = field(default_factory=dict)
    accepted: list[tuple[Reading, Device]] = field(default_factory=list)
    enriched: list[tuple[bytes, bytes]] = field(default_factory=list)

    def clear(self) -> None:
        self.deadletters.clear()
        self.forwards.clear()
        self.forward_sources.clear()
        self.accepted.clear()
        self.enriched.clear()


_MASK_BYTES = WIDTH // 8


def encode_seq(state: SeqState) -> bytes:
    """8 bytes of high seq, then the bitmap (JSON cannot carry a 1024-bit integer)."""
    return state.high.to_bytes(8, "big") + state.mask.to_bytes(_MASK_BYTES, "big")


def decode_seq(raw: bytes) -> SeqState:
    return SeqState(int.from_bytes(raw[:8], "big"), int.from_bytes(raw[8:], "big"))


def envelope_bytes(reading: Reading) -> bytes:
    """A reading as a telemetry envelope again (for dead letters of batch readings)."""
    doc: dict[str, Any] = {"device_id": reading.device_id, "ts": reading.ts}
    if reading.seq is not None:
        doc["seq"] = reading.seq
    doc["metrics"] = reading.metrics
    return orjson.dumps(doc)


class Ingest:
    def __init__(
        self,
        *,
        limits: Limits,
        registry: Registry,
        seqs: SeqStore,
        metrics: Metrics,
        partitions: int,
        pass_unknown: bool = False,
        emit_enriched: bool = True,
    ) -> None:
        self.limits = limits
        self.registry = registry
        self.seqs = seqs
        self.metrics = metrics
        self.partitions = partitions
        self.pass_unknown = pass_unknown
        self.emit_enriched = emit_enriched
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
        for reading in readings:
            owner = device_partition(reading.device_id, partitions)
            if owner == src.partition:
                local.append(reading)
            else:
                out.forwards.setdefault(owner, []).append(list(reading))
                out.forward_sources.setdefault(owner, src)
        if out.forwards:
            self.metrics.forwarded.inc(sum(len(v) for v in out.forwards.values()))
        self.accept(local, src, now_ms, out, whole)

    def on_forwarded(self, value: bytes | None, src: Source, now_ms: int, out: Outbox) -> None:
        """One message of the internal ``telemetry.bydevice`` topic (written by on_raw)."""
        try:
            doc = orjson.loads(value)  # type: ignore[arg-type]
            origin = Source(doc["src"][0], doc["src"][1], doc["src"][2], None)
            key = doc["src"][3]
            origin.key = None if key is None else base64.b64decode(key)
            readings = [Reading(r[0], r[1], r[2], r[3]) for r in doc["readings"]]
        except Exception as exc:  # an internal topic, but still input: never crash
            reject = Reject(SCHEMA, f"corrupt forwarded batch: {exc!r}"[:200], value or b"")
            self._deadletter(reject, src, now_ms, out)
            return
        self.accept(readings, origin, now_ms, out, None)

    # --- the per-device part ------------------------------------------------------------
    def accept(
        self,
        readings: list[Reading],
        src: Source,
        now_ms: int,
        out: Outbox,
        whole: bytes | None,
    ) -> None:
        """Registry check, de-duplication and enrichment of readings this partition owns."""
        get_device = self.registry.devices.get
        seqs = self.seqs
        partition = src.partition
        for reading in readings:
            device = get_device(reading.device_id)
            if device is None:
                if not self.pass_unknown:
                    payload = whole if whole is not None else envelope_bytes(reading)
                    detail = f"device {reading.device_id!r} is not in the registry"
                    self._deadletter(Reject(UNKNOWN_DEVICE, detail, payload), src, now_ms, out)
                    continue
                device = unknown_device(reading.device_id)
            if reading.seq is not None:
                verdict = check_seq(seqs.get(reading.device_id), reading.seq)
                if verdict.duplicate:
                    self.metrics.duplicates.inc()
                    continue
                if verdict.reset:
                    self.metrics.seq_resets.inc()
                seqs.set(reading.device_id, verdict.state, partition)
            self._inc_valid()
            out.accepted.append((reading, device))
            if self.emit_enriched:
                out.enriched.append((reading.device_id.encode(), enriched_record(reading, device)))

    def forward_value(self, readings: list[list[Any]], src: Source) -> bytes:
        key = None if src.key is None else base64.b64encode(src.key).decode()
        return orjson.dumps(
            {"src": [src.topic, src.partition, src.offset, key], "readings": readings}
        )

    def _deadletter(self, reject: Reject, src: Source, now_ms: int, out: Outbox) -> None:
        self.metrics.deadletter(reject.reason)
        record = deadletter_record(reject, src.topic, src.partition, src.offset, src.key, now_ms)
        out.deadletters.append((src.key, record))
