"""Alert floods grouped for people: one line for the events of one rule and district that
arrive within a short span, as Alertmanager groups its notifications.

When the school day starts, dozens of classrooms pass 1000 ppm within minutes; the
``alerts`` topic rightly carries one event per device and episode, but a terminal that
prints them all buries everything else. :class:`AlertGroups` holds each event for at
most ``span_s`` (Alertmanager's ``group_wait``, 30 s by default) after the first event
of its group arrived, a group being the events with the same (status, rule, district),
and then prints the group as one line (with its event time, severity, rule, district,
how many devices, the first few of them, and how far apart in event time)::

    2026-12-01 07:12:40  FIRING    warning   classroom_co2_high            Mitte: 37 devices
        (dui-mitte-gs017-r12-air, dui-mitte-gs017-r4-air, dui-mitte-gs021-r2-air and 34
        more), within 4m10s

(here wrapped). A group that holds a single device's events prints them as
:func:`streams.tools.backtest.describe_alert` does, a line each, as ``alerts tail`` always did.
Events that arrive after a group was printed start the next group of that key.

Pure: no Kafka and no clock of its own. The caller passes ``now`` (any clock in
seconds, e.g. ``time.monotonic()``) to :meth:`AlertGroups.add` and calls
:meth:`AlertGroups.due` on a timer, so that a lone event is held no longer than the
span; :meth:`AlertGroups.flush` prints what is left (at the end of a run).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from streams.stages.rules import SEVERITY_RANK
from streams.tools.backtest import describe_alert

DEFAULT_SPAN_S = 30.0  # Alertmanager's default group_wait
NAMES_SHOWN = 3

Key = tuple[str, str, str]


def group_key(record: dict[str, Any]) -> Key:
    """(status, rule, district); a missing field groups as ``?``."""
    return (
        str(record.get("status") or "?"),
        str(record.get("rule") or "?"),
        str(record.get("district") or "?"),
    )


def _event_ms(record: dict[str, Any]) -> int | None:
    """When it happened, as describe_alert shows it (``ends_at`` for a resolved event)."""
    when = record.get("ends_at") if record.get("status") == "resolved" else record.get("at")
    return when if isinstance(when, int) and not isinstance(when, bool) else None


def _stamp(ms: int | None) -> str:
    if ms is None:
        return "-" * 19
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _span(ms: int) -> str:
    s = ms // 1000
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


# What an event says it covers besides its device: a parent's silent children, a
# scope alert's devices.
_AFFECTED = ("affected_children", "affected_devices", "affected_count")


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def describe_group(events: list[dict[str, Any]], names: int = NAMES_SHOWN) -> list[str]:
    """The lines for one group's events: one line when they come from several devices,
    else each event's own line."""
    devices = list(dict.fromkeys(str(e.get("device_id") or "?") for e in events))
    if len(devices) <= 1:
        return [describe_alert(e) for e in events]
    status, rule, district = group_key(events[0])
    severities = [str(e.get("severity") or "?") for e in events]
    severity = max(severities, key=lambda s: SEVERITY_RANK.get(s, -1))
    times = [t for t in (_event_ms(e) for e in events) if t is not None]
    shown = ", ".join(devices[:names])
    if len(devices) > names:
        shown += f" and {len(devices) - names} more"
    line = (
        f"{_stamp(min(times) if times else None)}  {status.upper():8}  {severity:8}  "
        f"{rule:28}  {district}: {len(devices)} devices"
    )
    if len(events) > len(devices):
        line += f", {len(events)} events"
    line += f" ({shown})"
    if times and max(times) - min(times) >= 1000:
        line += f", within {_span(max(times) - min(times))}"
    behind = sum(max(_count(e.get(f)) for f in _AFFECTED) for e in events)
    if behind:
        line += f"; {behind} affected device{'s' if behind != 1 else ''} behind them"
    return [line]


@dataclass(slots=True)
class _Group:
    due: float
    events: list[dict[str, Any]] = field(default_factory=list)


class AlertGroups:
    """Alert events in, terminal lines out: grouped per (status, rule, district) over
    ``span_s`` of arrival time, or a line per event with ``ungrouped`` (or a span of 0)."""

    def __init__(
        self, span_s: float = DEFAULT_SPAN_S, *, ungrouped: bool = False, names: int = NAMES_SHOWN
    ) -> None:
        self.span_s = span_s
        self.ungrouped = ungrouped or span_s <= 0
        self.names = names
        self._open: dict[Key, _Group] = {}  # in order of arrival of their first event

    def add(self, record: dict[str, Any], now: float) -> list[str]:
        """Take one alert event that arrived at ``now``; returns the lines due by then."""
        if self.ungrouped:
            return [describe_alert(record)]
        lines = self.due(now)  # a group whose span is over takes no more
        key = group_key(record)
        group = self._open.get(key)
        if group is None:
            group = self._open[key] = _Group(due=now + self.span_s)
        group.events.append(record)
        return lines

    def due(self, now: float) -> list[str]:
        """The lines of every group whose span has passed at ``now``."""
        lines: list[str] = []
        for key in [k for k, g in self._open.items() if g.due <= now]:
            lines += describe_group(self._open.pop(key).events, self.names)
        return lines

    def flush(self) -> list[str]:
        """Every group still held, now (the end of a run)."""
        lines: list[str] = []
        for group in self._open.values():
            lines += describe_group(group.events, self.names)
        self._open.clear()
        return lines

    def next_due(self) -> float | None:
        """When the next group is due, or None when nothing is held."""
        return min((g.due for g in self._open.values()), default=None)

    @property
    def held(self) -> int:
        """Events held, not yet printed."""
        return sum(len(g.events) for g in self._open.values())
