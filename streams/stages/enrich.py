"""The device registry as every worker holds it, and enrichment of readings from it.

Pure: the worker feeds :meth:`Registry.apply` with the records of the compacted
``devices`` topic (a null value is a tombstone) and asks :meth:`Registry.get` per
reading. A malformed registry record is reported, never raised, and leaves the
device's previous record in place.
"""

from __future__ import annotations

import sys
from typing import Any, NamedTuple, TypeVar

import orjson

from streams.devices import check_device
from streams.stages.validate import Reading

UNKNOWN_KIND = "unknown"
K = TypeVar("K")


class Device(NamedTuple):
    device_id: str
    kind: str
    district: str
    site: str
    lat: float | None
    lon: float | None
    parent: str | None
    heartbeat_s: float | None


def unknown_device(device_id: str) -> Device:
    """How a reading from an unregistered device is enriched when such readings pass."""
    return Device(device_id, UNKNOWN_KIND, UNKNOWN_KIND, UNKNOWN_KIND, None, None, None, None)


def device_from_record(obj: dict[str, Any]) -> Device:
    heartbeat = obj.get("heartbeat_s")
    parent = obj.get("parent")
    # Kinds, districts, sites and parents repeat across devices: one string each, not
    # one per device (~150 bytes a device with 100,000 of them).
    return Device(
        obj["device_id"],
        sys.intern(obj["kind"]),
        sys.intern(obj["district"]),
        sys.intern(obj["site"]),
        float(obj["lat"]),
        float(obj["lon"]),
        None if parent is None else sys.intern(parent),
        None if heartbeat is None else float(heartbeat),
    )


class Registry:
    """device_id -> :class:`Device`, fed from the ``devices`` topic."""

    def __init__(self) -> None:
        self.devices: dict[str, Device] = {}
        self.children: dict[str, set[str]] = {}
        # (district, kind) -> device ids: who a district window waits for
        self.members: dict[tuple[str, str], set[str]] = {}

    def __len__(self) -> int:
        return len(self.devices)

    def get(self, device_id: str) -> Device | None:
        return self.devices.get(device_id)

    def apply(self, key: bytes | None, value: bytes | None) -> str | None:
        """Apply one record of the ``devices`` topic; returns the problem, if any."""
        if key is None:
            return "record without a key (the key must be the device_id)"
        try:
            device_id = key.decode("utf-8")
        except UnicodeDecodeError:
            return "key is not UTF-8"
        if value is None:
            self._remove(device_id)
            return None
        try:
            obj = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            return f"{device_id}: not JSON ({exc})"
        problem = check_device(obj)
        if problem is not None:
            return f"{device_id}: {problem}"
        if obj["device_id"] != device_id:
            return f"key {device_id!r} differs from device_id {obj['device_id']!r}"
        self._remove(device_id)
        device = device_from_record(obj)
        self.devices[device_id] = device
        if device.parent is not None:
            self.children.setdefault(device.parent, set()).add(device_id)
        self.members.setdefault((device.district, device.kind), set()).add(device_id)
        return None

    def _remove(self, device_id: str) -> None:
        old = self.devices.pop(device_id, None)
        if old is None:
            return
        if old.parent is not None:
            _discard(self.children, old.parent, device_id)
        _discard(self.members, (old.district, old.kind), device_id)


def _discard(index: dict[K, set[str]], key: K, device_id: str) -> None:
    group = index.get(key)
    if group is not None:
        group.discard(device_id)
        if not group:
            del index[key]


def enriched_record(reading: Reading, device: Device) -> bytes:
    """A reading with its device's registry data, as published on ``telemetry.enriched``."""
    return orjson.dumps(
        {
            "device_id": reading.device_id,
            "ts": reading.ts,
            "seq": reading.seq,
            "metrics": reading.metrics,
            "kind": device.kind,
            "district": device.district,
            "site": device.site,
            "lat": device.lat,
            "lon": device.lon,
            "parent": device.parent,
            "heartbeat_s": device.heartbeat_s,
        }
    )
