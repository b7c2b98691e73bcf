"""Offline detection with correlation: which devices went silent, and why.

No faust here. Every accepted reading says "device D was heard at wall time A with
event time T"; those notes travel to the partition of D's *root* (the top of its
``parent`` chain: a school's access point, a 5G cell), so one owner sees a whole family
and can tell a dead access point from twenty dead sensors.

Rules (:meth:`Liveness.tick`, on a wall-clock timer):

- a device's *limit* is ``k`` times its ``heartbeat_s`` from the registry, or, without
  one, ``k`` times its observed cadence (an average of the event-time gaps between its
  readings, after 3 gaps; before that it is not judged);
- a device silent for longer than its limit is offline, unless an ancestor is offline
  too (then it is *covered*: no alert of its own) or an ancestor is *suspect* (silent
  for more than one heartbeat: the device waits for the ancestor's verdict);
- an offline device that is not covered opens a ``device_offline`` episode; the alert
  carries ``affected_children``: its descendants that have not reported since it went
  silent (plus their own heartbeat), i.e. went quiet with it;
- the episode resolves when the device reports again; covered descendants then get
  their own episodes at the next tick if they are still silent;
- after an assignment (a restart, a rebalance) silence is counted from the moment this
  worker took the family over, so a worker that was down does not page for everything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import orjson

from streams.alerts import alert_id, alert_record
from streams.enrich import Device, Registry

OFFLINE_RULE = "device_offline"
MAX_DEPTH = 8  # parent chains are short; a cycle in bad registry data must not hang us


@dataclass(slots=True)
class Seen:
    arrival: int  # wall-clock ms of the latest reading
    ts: int  # its event time
    cadence: float = 0.0  # mean event-time gap between readings, ms
    gaps: int = 0
    offline_since: int = -1  # when the current episode (or covered silence) started
    alert_id: str = ""  # of the open episode; "" when covered or online


@dataclass(slots=True)
class Family:
    """The liveness of one root and its descendants (the unit of state)."""

    devices: dict[str, Seen] = field(default_factory=dict)

    def to_json(self) -> list[Any]:
        return [
            [d, s.arrival, s.ts, s.cadence, s.gaps, s.offline_since, s.alert_id]
            for d, s in self.devices.items()
        ]

    @classmethod
    def from_json(cls, doc: list[Any]) -> Family:
        return cls({d[0]: Seen(*d[1:]) for d in doc})


def encode_family(family: Family) -> bytes:
    return orjson.dumps(family.to_json())


def decode_family(raw: bytes) -> Family:
    return Family.from_json(orjson.loads(raw))


def root_of(registry: Registry, device_id: str) -> str:
    current = device_id
    for _ in range(MAX_DEPTH):
        device = registry.devices.get(current)
        if device is None or not device.parent or device.parent not in registry.devices:
            return current
        current = device.parent
    return current


def note(family: Family, device_id: str, arrival: int, ts: int) -> Seen:
    """Record that ``device_id`` was heard; returns its entry."""
    seen = family.devices.get(device_id)
    if seen is None:
        seen = family.devices[device_id] = Seen(arrival, ts)
        return seen
    gap = ts - seen.ts
    if gap > 0:
        # A running mean that forgets slowly (the last ~10 gaps).
        seen.cadence = (
            gap if seen.gaps == 0 else seen.cadence + (gap - seen.cadence) / min(seen.gaps + 1, 10)
        )
        seen.gaps += 1
        seen.ts = ts
    seen.arrival = max(seen.arrival, arrival)
    return seen


class Liveness:
    """Judges families; emits ``device_offline`` alert events into a list."""

    def __init__(self, registry: Registry, k: float = 3.0, severity: str = "warning") -> None:
        self.registry = registry
        self.k = k
        self.severity = severity

    def interval_ms(self, device_id: str, seen: Seen) -> float | None:
        device = self.registry.devices.get(device_id)
        if device is not None and device.heartbeat_s:
            return device.heartbeat_s * 1000.0
        return seen.cadence if seen.gaps >= 3 else None

    def heard(
        self, family: Family, device_id: str, arrival: int, ts: int, out: list[dict[str, Any]]
    ) -> None:
        """A reading of ``device_id`` arrived: note it, and resolve its episode if open."""
        seen = family.devices.get(device_id)
        if seen is not None and seen.offline_since >= 0:
            device = self.registry.devices.get(device_id)
            if seen.alert_id and device is not None:
                out.append(
                    self._record(device, seen, "resolved", max(arrival, seen.offline_since), None)
                )
            seen.offline_since, seen.alert_id = -1, ""
        note(family, device_id, arrival, ts)

    def tick(self, family: Family, now: int, owned_since: int, out: list[dict[str, Any]]) -> bool:
        """Judge every device of ``family`` at wall time ``now``; returns whether the
        family's state changed."""
        changed = False
        silent: dict[str, bool] = {}  # past its limit
        suspect: dict[str, bool] = {}  # past one interval
        for device_id, seen in family.devices.items():
            interval = self.interval_ms(device_id, seen)
            quiet = now - max(seen.arrival, owned_since)
            silent[device_id] = interval is not None and quiet > self.k * interval
            suspect[device_id] = interval is not None and quiet > interval
        for device_id, seen in family.devices.items():
            device = self.registry.devices.get(device_id)
            if not silent[device_id] or device is None:
                continue
            covered, waiting = False, False
            for ancestor in self._ancestors(device):
                a = family.devices.get(ancestor)
                if a is None:
                    continue
                if a.offline_since >= 0 or silent.get(ancestor, False):
                    covered = True
                elif suspect.get(ancestor, False):
                    waiting = True
            if covered:
                if seen.alert_id:  # it was alone offline, now an ancestor is: keep its episode
                    continue
                if seen.offline_since < 0:
                    seen.offline_since = now
                    changed = True
                continue
            if waiting or seen.alert_id:
                continue
            seen.offline_since = now
            seen.alert_id = alert_id(device_id, OFFLINE_RULE, seen.arrival)  # stable on retry
            affected = self._affected(family, device_id, seen)
            out.append(self._record(device, seen, "firing", None, affected))
            changed = True
        # Covered devices whose ancestors are back and that are silent still are judged
        # on their own at the next tick; those heard again were cleared by `heard`.
        for device_id, seen in family.devices.items():
            if seen.offline_since >= 0 and not seen.alert_id and not silent[device_id]:
                seen.offline_since = -1
                changed = True
        return changed

    @staticmethod
    def any_offline(family: Family) -> bool:
        return any(seen.offline_since >= 0 for seen in family.devices.values())

    def next_check(self, family: Family, owned_since: int) -> int:
        """The earliest wall time at which :meth:`tick` can find anything to do in
        ``family`` (0: at every tick). Until then no device of it is past one interval
        (suspect, let alone silent) and none is offline, so a tick would change nothing:
        the timer skips it (with 100,000 families, judging each every second took
        ~0.3 s of every second). Valid until the family hears from a device or the
        registry changes (heartbeats), which is when the caller asks again."""
        due = -1
        for device_id, seen in family.devices.items():
            if seen.offline_since >= 0:
                return 0
            interval = self.interval_ms(device_id, seen)
            if interval is None:
                continue  # never judged until heard again (cadence not learned yet)
            # suspect once `now - max(arrival, owned_since) > interval`, silent once
            # past k intervals: whichever comes first
            at = max(seen.arrival, owned_since) + math.floor(min(1.0, self.k) * interval) + 1
            if due < 0 or at < due:
                due = at
        return due if due >= 0 else 2**62

    def _ancestors(self, device: Device) -> list[str]:
        out: list[str] = []
        current = device
        for _ in range(MAX_DEPTH):
            if not current.parent or current.parent in out:
                break
            out.append(current.parent)
            parent = self.registry.devices.get(current.parent)
            if parent is None:
                break
            current = parent
        return out

    def _affected(self, family: Family, device_id: str, seen: Seen) -> int:
        """Descendants that went quiet with ``device_id``: not heard since its last
        report plus their own interval."""
        count = 0
        stack = list(self.registry.children.get(device_id, ()))
        visited: set[str] = set()
        while stack:
            child = stack.pop()
            if child in visited:
                continue
            visited.add(child)
            stack.extend(self.registry.children.get(child, ()))
            c = family.devices.get(child)
            if c is None:
                continue  # never heard: not counted (it may never have been deployed)
            interval = self.interval_ms(child, c) or 0.0
            if c.arrival <= seen.arrival + interval:
                count += 1
        return count

    def _record(
        self,
        device: Device,
        seen: Seen,
        status: str,
        ends_at: int | None,
        affected: int | None,
    ) -> dict[str, Any]:
        interval = self.interval_ms(device.device_id, seen) or 0.0
        limit_s = self.k * interval / 1000.0
        silent_s = (seen.offline_since - seen.arrival) / 1000.0
        text = f"{device.device_id} at {device.site} silent for {silent_s:.0f} s"
        text += f" (limit {limit_s:.0f} s)"
        if affected:
            text += f"; {affected} device{'s' if affected > 1 else ''} behind it silent too"
        if status == "resolved":
            text = f"{device.device_id} at {device.site} reports again"
        return alert_record(
            alert_id=seen.alert_id,
            rule=OFFLINE_RULE,
            status=status,
            severity=self.severity,
            device=device,
            metric=None,
            value=silent_s,
            threshold=limit_s,
            starts_at=seen.offline_since,
            ends_at=ends_at,
            summary=text,
            at=seen.offline_since if ends_at is None else ends_at,
            affected_children=affected,
        )
