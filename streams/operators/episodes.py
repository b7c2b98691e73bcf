"""Alert episodes as Alertmanager sees them: pure bookkeeping, no network, no clock.

The forwarder feeds :class:`Book` with the events of ``alerts`` (with their partition and
offset) and asks it what to post; :class:`Outbox` remembers, per Alertmanager, which
episodes still have to be posted there. Both are plain data so that the rules below
are unit-tested without a broker.

**Identity.** Alertmanager identifies an alert by its label set. An episode is posted
with ``alertname`` (the rule), ``severity``, ``device_id``, ``kind``, ``district``,
``site``, ``parent`` (where the device has one) and ``alert_id``. ``alert_id`` is a
label (and an annotation, where the issue asks for it) because a silence can only
match labels: an acknowledgement silences exactly one episode, and keeps silencing it
through an escalation, while the device's next episode is new and notifies again.

**Escalation.** An escalated episode (``classroom_co2_high`` -> ``classroom_co2_critical``)
changes ``alertname`` and ``severity``, so its label set changes: Alertmanager would
keep the old alert firing until ``endsAt``. The book *retires* the previous label set:
the next post carries it with ``endsAt`` = now beside the new one, so Alertmanager holds
one active alert per episode at every moment, routed by its current severity (a
critical one pages on-call with the critical route's ``repeat_interval``). Severity
stays a label rather than an annotation because routes and inhibitions can only use
labels.

**Never back from the dead.** A resolved episode is *closed* once its resolution has
reached every Alertmanager, and the closed marker is kept for :data:`CLOSED_KEEP_MS`:
an event of a closed episode (a worker's at-least-once repeat, a replay after a
forwarder crash) changes nothing. Events at or before the offset already applied are
ignored as well.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

RESOLVED = "resolved"
FIRING = "firing"
CLOSED_KEEP_MS = 24 * 3600 * 1000  # how long a closed episode's marker is remembered
RUNBOOK_ANCHOR = "runbook-alert-episodes"
# Identity labels taken from the event as they are (absent or empty: no label).
EVENT_LABELS = ("device_id", "kind", "district", "site")
# What an event says it covers besides its device, shown as annotations.
AFFECTED = ("affected_children", "affected_devices")


def iso(ms: int) -> str:
    """Epoch ms as the RFC 3339 time Alertmanager's API takes."""
    stamp = datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def labels_of(record: dict[str, Any], parent: str | None) -> dict[str, str]:
    """The label set of an alert event (see the module's doc)."""
    labels = {
        "alertname": str(record["rule"]),
        "severity": str(record["severity"]),
        "alert_id": str(record["alert_id"]),
    }
    for name in EVENT_LABELS:
        value = record.get(name)
        if isinstance(value, str) and value:
            labels[name] = value
    if parent:
        labels["parent"] = parent
    return labels


def _number(value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return f"{value:g}" if math.isfinite(value) else None


def annotations_of(record: dict[str, Any], runbook_base: str) -> dict[str, str]:
    out = {
        "summary": str(record.get("summary") or record["rule"]),
        "alert_id": str(record["alert_id"]),
        "runbook_url": f"{runbook_base}#{RUNBOOK_ANCHOR}",
    }
    for name in ("value", "threshold", *AFFECTED):
        text = _number(record.get(name))
        if text is not None:
            out[name] = text
    return out


def check_event(record: object) -> str | None:
    """Why an ``alerts`` record cannot be forwarded (None: it can)."""
    if not isinstance(record, dict):
        return "not a JSON object"
    for name in ("alert_id", "rule", "severity"):
        if not isinstance(record.get(name), str) or not record[name]:
            return f"no {name}"
    if record.get("status") not in (FIRING, RESOLVED):
        return "status is neither firing nor resolved"
    starts = record.get("starts_at")
    if isinstance(starts, bool) or not isinstance(starts, int):
        return "no integer starts_at"
    return None


@dataclass(slots=True)
class Tracked:
    """One episode the forwarder knows: its latest event and what was posted before."""

    alert_id: str
    record: dict[str, Any]
    src: tuple[int, int] = (-1, -1)  # partition and offset of `record` in `alerts`
    parent: str | None = None  # fixed when first seen: a label must not change under it
    retired: list[dict[str, str]] = field(default_factory=list)
    closed_at: int | None = None  # wall ms its resolution had reached every Alertmanager
    version: int = 0  # in memory only: which change an Outbox entry carries

    @property
    def status(self) -> str:
        return str(self.record["status"])

    @property
    def firing(self) -> bool:
        return self.status == FIRING

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "record": self.record,
                "src": list(self.src),
                "parent": self.parent,
                "retired": self.retired,
                "closed_at": self.closed_at,
            }
        )

    @classmethod
    def from_json(cls, alert_id: str, raw: bytes) -> Tracked:
        doc = orjson.loads(raw)
        return cls(
            alert_id,
            doc["record"],
            (int(doc["src"][0]), int(doc["src"][1])),
            doc.get("parent"),
            list(doc.get("retired") or []),
            doc.get("closed_at"),
        )

    def alerts(self, now_ms: int, resend_ms: int, runbook_base: str) -> list[dict[str, Any]]:
        """What to post for this episode now: its retired label sets as resolved, and
        itself, firing until 4 resends from now (as Prometheus does) or resolved."""
        if self.closed_at is not None:
            return []
        record = self.record
        starts = min(int(record["starts_at"]), now_ms)
        annotations = annotations_of(record, runbook_base)
        out = [
            {
                "labels": old,
                "annotations": annotations,
                "startsAt": iso(starts),
                "endsAt": iso(now_ms),
            }
            for old in self.retired
        ]
        if self.firing:
            ends = now_ms + 4 * resend_ms
        else:
            ended = record.get("ends_at")
            ended = ended if isinstance(ended, int) and not isinstance(ended, bool) else now_ms
            ends = max(starts, min(ended, now_ms))  # an end ahead of the clock: now
        current = labels_of(record, self.parent)
        out.append(
            {
                "labels": current,
                "annotations": annotations,
                "startsAt": iso(starts),
                "endsAt": iso(ends),
            }
        )
        return out


class Book:
    """The episodes the forwarder has seen, by alert_id."""

    def __init__(self) -> None:
        self.episodes: dict[str, Tracked] = {}

    def __len__(self) -> int:
        return len(self.episodes)

    def get(self, alert_id: str) -> Tracked | None:
        return self.episodes.get(alert_id)

    def restore(self, key: bytes, value: bytes | None) -> None:
        """One record of the forwarder's state topic (a tombstone forgets the episode)."""
        alert_id = key.decode()
        if value is None:
            self.episodes.pop(alert_id, None)
        else:
            self.episodes[alert_id] = Tracked.from_json(alert_id, value)

    def apply(
        self, record: dict[str, Any], partition: int, offset: int, parent: str | None = None
    ) -> Tracked | None:
        """Take one checked alert event; returns the episode if it changed. ``parent``
        is the device's parent in the registry, used when the episode is new."""
        alert_id = str(record["alert_id"])
        tracked = self.episodes.get(alert_id)
        if tracked is None:
            if record["status"] == RESOLVED:
                # Its firing event was never read (before this forwarder's group began,
                # or its marker expired): Alertmanager cannot hold it as ours.
                return None
            tracked = self.episodes[alert_id] = Tracked(alert_id, record, parent=parent)
        else:
            if tracked.closed_at is not None or not tracked.firing:
                return None  # resolved is final: see the module's doc
            if tracked.src[0] == partition and offset <= tracked.src[1]:
                return None  # applied before a restart
            old, new = labels_of(tracked.record, tracked.parent), labels_of(record, tracked.parent)
            if new != old and old not in tracked.retired:
                tracked.retired.append(old)
            # Back to a severity it had (a de-escalation): that set fires again, it
            # must not be ended in the same post.
            tracked.retired = [r for r in tracked.retired if r != new]
            tracked.record = record
        tracked.src = (partition, offset)
        tracked.version += 1
        return tracked

    def settle(self, alert_id: str, now_ms: int) -> bool:
        """Every Alertmanager has the episode's latest change: a resolved episode closes
        and retired label sets are forgotten. Returns whether the state changed."""
        tracked = self.episodes.get(alert_id)
        if tracked is None or tracked.closed_at is not None:
            return False
        changed = bool(tracked.retired)
        tracked.retired = []
        if not tracked.firing:
            tracked.closed_at = now_ms
            changed = True
        return changed

    def purge(self, now_ms: int, keep_ms: int = CLOSED_KEEP_MS) -> list[str]:
        """Forget closed episodes older than ``keep_ms``; returns their ids (tombstones)."""
        gone = [
            a
            for a, t in self.episodes.items()
            if t.closed_at is not None and now_ms - t.closed_at > keep_ms
        ]
        for alert_id in gone:
            del self.episodes[alert_id]
        return gone

    def firing(self) -> list[Tracked]:
        return [t for t in self.episodes.values() if t.firing and t.closed_at is None]

    def unsettled(self) -> list[Tracked]:
        """Episodes Alertmanager may still have to hear about: open, or resolved but
        not yet delivered everywhere."""
        return [t for t in self.episodes.values() if t.closed_at is None]


@dataclass(slots=True)
class Outbox:
    """What one Alertmanager still has to receive: alert_id -> (version, when the
    oldest change not yet delivered there was made; None for a mere resend)."""

    due: dict[str, tuple[int, int | None]] = field(default_factory=dict)

    def mark(self, tracked: Tracked, now_ms: int, change: bool = True) -> None:
        previous = self.due.get(tracked.alert_id)
        since = previous[1] if previous is not None else None
        if change and since is None:
            since = now_ms
        self.due[tracked.alert_id] = (tracked.version, since)

    def take(self, limit: int) -> list[tuple[str, int]]:
        items = []
        for alert_id, (version, _) in self.due.items():
            items.append((alert_id, version))
            if len(items) >= limit:
                break
        return items

    def done(self, items: list[tuple[str, int]]) -> list[str]:
        """These versions arrived; returns the ids with nothing newer due."""
        settled = []
        for alert_id, version in items:
            entry = self.due.get(alert_id)
            if entry is not None and entry[0] == version:
                del self.due[alert_id]
                settled.append(alert_id)
        return settled

    def oldest_ms(self, now_ms: int) -> int:
        """Age of the oldest change not yet delivered (0: none)."""
        times = [since for _, since in self.due.values() if since is not None]
        return now_ms - min(times) if times else 0

    def __len__(self) -> int:
        return len(self.due)
