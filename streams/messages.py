"""The records of the internal topics: one type per topic, its encoding and decoding
next to it, and a version.

These topics are read only by citystreams workers, but workers of two releases read
each other's records during a rolling upgrade, and a restarted worker reads what an
older one wrote. So they follow the public contract's compatibility policy
(``schemas/README.md``): a version changes additively only (a new trailing element of
a positional record, a new key of a keyed one), a reader ignores what it does not
know, and a breaking change means a new topic (``<topic>.v2``). Every record of a
topic is of its type's ``VERSION``; version 1 is the layout the first wave wrote.

Decoding raises :class:`ValueError` for a record that is not of its type: the callers
count and log it (an internal topic is input all the same: a worker never crashes on
it).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import orjson

from streams.stages.validate import Reading


class Source(NamedTuple):
    """The input message a reading came in (for a forwarded reading, the
    ``telemetry.raw`` message of its gateway batch): its dead letters name it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None


@dataclass(frozen=True, slots=True)
class ForwardedReadings:
    """``telemetry.bydevice``: readings of a gateway batch whose devices belong to
    another partition, sent to that partition (unkeyed, partition chosen).

    v1: ``{"src": [topic, partition, offset, key base64 | null], "readings":
    [[device_id, ts, seq | null, {metric: value}], ...]}``"""

    VERSION: ClassVar[int] = 1

    origin: Source
    readings: list[Reading]

    def encode(self) -> bytes:
        return encode_forwarded(self.origin, [list(r) for r in self.readings])

    @classmethod
    def decode(cls, raw: bytes | None) -> ForwardedReadings:
        try:
            doc = orjson.loads(raw)  # type: ignore[arg-type]
            topic, partition, offset, key = doc["src"][:4]
            origin = Source(
                topic, partition, offset, None if key is None else base64.b64decode(key)
            )
            readings = [Reading(r[0], r[1], r[2], r[3]) for r in doc["readings"]]
        except Exception as exc:  # (any shape at all may arrive)
            raise ValueError(f"corrupt forwarded batch: {exc!r}") from None
        return cls(origin, readings)


def encode_forwarded(origin: Source, readings: list[Any]) -> bytes:
    """:meth:`ForwardedReadings.encode`, for readings as tuples or lists (the hot path
    builds them without the record type)."""
    key = None if origin.key is None else base64.b64encode(origin.key).decode()
    src = [origin.topic, origin.partition, origin.offset, key]
    return orjson.dumps({"src": src, "readings": readings})


@dataclass(frozen=True, slots=True)
class DeviceWindowClosed:
    """``windows.bydistrict``: a closed device window, for its district's window. Keyed
    by ``[district, kind]``, so one partition owns each district window.

    v1: key ``[district, kind]``; value ``[device_id, start, end, aggregates]`` (the
    aggregates as :func:`streams.stages.windows.add_reading` builds them)."""

    VERSION: ClassVar[int] = 1

    district: str
    kind: str
    device_id: str
    start: int
    end: int
    aggregates: dict[str, list[Any]]

    def key(self) -> bytes:
        return orjson.dumps([self.district, self.kind])

    def encode(self) -> bytes:
        return orjson.dumps([self.device_id, self.start, self.end, self.aggregates])

    @classmethod
    def decode(cls, key: bytes | None, value: bytes | None) -> DeviceWindowClosed:
        try:
            where, doc = orjson.loads(key), orjson.loads(value)  # type: ignore[arg-type]
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"not a closed device window: {exc}") from None
        if not (isinstance(where, list) and len(where) >= 2):
            raise ValueError("not a closed device window: its key is not [district, kind]")
        if not (isinstance(doc, list) and len(doc) >= 4):
            raise ValueError("not a closed device window: [device_id, start, end, aggregates]")
        (district, kind), (device_id, start, end, aggregates) = where[:2], doc[:4]
        types = (district, kind, device_id, start, end, aggregates)
        if [type(t) for t in types] != [str, str, str, int, int, dict]:
            raise ValueError(f"not a closed device window: {doc[:3]!r}"[:200])
        return cls(district, kind, device_id, start, end, aggregates)


class Heard(NamedTuple):
    """A device heard by its owner, for its family's owner (``liveness.byroot``): the
    wall time its reading arrived and the reading's event time."""

    root: str
    device_id: str
    arrival: int
    ts: int


@dataclass(frozen=True, slots=True)
class LivenessNotes:
    """``liveness.byroot``: the devices heard in the last second whose families one
    partition owns (unkeyed, partition chosen: the family's district's).

    v1: ``[[root, device_id, arrival, ts], ...]``"""

    VERSION: ClassVar[int] = 1

    notes: list[Heard]

    def encode(self) -> bytes:
        return orjson.dumps([list(note) for note in self.notes])  # (orjson: no NamedTuple)

    @classmethod
    def decode(cls, raw: bytes | None) -> LivenessNotes:
        try:
            notes = [Heard(n[0], n[1], int(n[2]), int(n[3])) for n in orjson.loads(raw)]  # type: ignore[arg-type]
        except Exception as exc:
            raise ValueError(f"not liveness notes: {exc!r}") from None
        return cls(notes)


@dataclass(frozen=True, slots=True)
class OccupancyValues:
    """``occupancy.latest`` (compacted, keyed by device id): a device's latest values of
    the metrics that rules with an ``occupancy`` condition read; a tombstone forgets it.

    v1: ``{metric: value}``"""

    VERSION: ClassVar[int] = 1

    values: dict[str, float]

    def encode(self) -> bytes:
        return orjson.dumps(self.values)

    @classmethod
    def decode(cls, raw: bytes) -> OccupancyValues:
        try:
            doc = orjson.loads(raw)
            return cls({str(k): float(v) for k, v in doc.items()})
        except Exception as exc:
            raise ValueError(f"not occupancy values: {exc!r}") from None
