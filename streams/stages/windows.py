"""Event-time tumbling windows per device and per district, with a watermark per device.

Pure functions and small state classes, no faust. Times are epoch milliseconds; a
window is ``[start, start + size)`` with ``start`` a multiple of ``size``.

**Device windows.** Each device has its own watermark: its highest event time seen
minus the grace. A window closes, and is emitted once, when

1. the device's watermark reaches the window's end (the device's own readings moved
   past it: a gateway's backlog is processed in order and is never "late" because
   other devices are current), or
2. the idle timer finds the device silent for ``idle`` of wall time *and* its
   watermark, moved on by its silence, past the window's end: its newest event time
   plus the wall time it has been silent, minus the grace. Event time is assumed to
   pass no faster than the wall clock while a device says nothing, so a device whose
   event time runs behind the wall clock (a gateway's backlog being uploaded, a
   replay, a restarted simulator) is not closed "up to now" under its feet: a pause of
   ``idle`` in its upload does not make the rest of it late. For a device reporting in
   real time it is the wall clock minus the grace, as before. Silence counts from the
   partition's takeover at the earliest, and a partition whose input is not yet read
   to its end is not visited (a restarted worker's backlog is not silence). It never
   closes past the wall clock minus the grace either.

A reading whose window has already closed is late: it is not added, and the caller
dead-letters it with reason ``late``.

**District windows** (per district and device kind, ``district_size`` a multiple of
``size``) are built from closed device windows and close at the first of

1. every registered device of that district and kind has delivered a device window
   that starts at or after the district window's end (all of them moved past it), or
2. the wall clock is ``wait`` past both the district window's end plus the grace and
   the arrival of its first device window (so a live window closes ``wait`` after its
   end, and one replayed from a backlog ``wait`` after it started to fill).

A device window for a district window that has closed is counted as late and dropped.

**p95** of a district window is estimated from every reading's value with a
logarithmic histogram (DDSketch's mapping) of relative accuracy 1%: the estimate is
within 1% of the nearest-rank p95 of the raw values (exact for 0).
"""

from __future__ import annotations

import math
from typing import Any, Final, NamedTuple

# Per metric in an open device window, one list: [last_ts, last, value, value, ...].
# Every value is kept anyway (the district p95 needs them), so count, min, max and sum
# are computed when the window closes: one list per metric instead of a 7-slot list,
# a value list and a running sum (~130 bytes less per metric, and less work per reading).
LAST_TS, LAST, FIRST_VALUE = 0, 1, 2

SKETCH_ACCURACY: Final = 0.01
_GAMMA: Final = (1 + SKETCH_ACCURACY) / (1 - SKETCH_ACCURACY)
_LOG_GAMMA: Final = math.log(_GAMMA)
_ZERO: Final = 1e-12  # values closer to 0 than this share the zero bucket
_OFFSET: Final = 10_000  # > |log_gamma(1e-12)| ~ 1382


def window_start(ts: int, size: int) -> int:
    return ts - ts % size


# --- device windows ----------------------------------------------------------------------
class DeviceState:
    """Everything the pipeline keeps per device: open windows, progress, seen seqs.

    ``applied`` holds, per input (0: ``telemetry.raw``, 1: ``telemetry.bydevice``), the
    offset of the last message whose readings are in this state. A message redelivered
    after a crash (at-least-once) at or below it is skipped for this device, so each
    device's state can be written to its changelog at any time and stays exact.
    """

    __slots__ = (
        "applied",
        "closed_until",
        "last_arrival",
        "max_ts",
        "open",
        "seq_high",
        "seq_mask",
    )

    def __init__(self) -> None:
        self.max_ts = -1  # highest event time seen
        self.closed_until = 0  # every window ending at or before this has been emitted
        self.last_arrival = 0  # wall clock of the latest reading, for the idle timer
        self.open: dict[int, dict[str, list[Any]]] = {}
        self.seq_high = -1  # de-duplication (streams.stages.dedup): -1 means no seq seen yet
        self.seq_mask = 0
        self.applied = [-1, -1]

    def to_json(self) -> list[Any]:
        return [
            self.max_ts,
            self.closed_until,
            self.last_arrival,
            list(self.open.items()),
            self.seq_high,
            format(self.seq_mask, "x"),  # up to 1,024 bits: JSON numbers cannot carry it
            self.applied,
        ]

    @classmethod
    def from_json(cls, doc: list[Any]) -> DeviceState:
        state = cls()
        state.max_ts, state.closed_until, state.last_arrival = doc[0], doc[1], doc[2]
        state.open = {int(start): _upgrade(aggs) for start, aggs in doc[3]}
        state.seq_high, state.seq_mask, state.applied = doc[4], int(doc[5], 16), list(doc[6])
        return state


class Closed(NamedTuple):
    """A device window that has closed: ``[start, end)`` and its per-metric aggregates."""

    start: int
    end: int
    aggregates: dict[str, list[Any]]


def _upgrade(aggs: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """Aggregates as this version keeps them. State and device windows written before
    it held [count, min, max, sum, last_ts, last, values] per metric."""
    for name, a in aggs.items():
        if len(a) == 7 and isinstance(a[6], list):
            aggs[name] = [a[4], a[5], *a[6]]
    return aggs


def add_reading(
    state: DeviceState,
    ts: int,
    metrics: dict[str, float],
    arrival_ms: int,
    size: int,
    grace: int,
) -> tuple[bool, list[Closed]]:
    """Add one reading; returns (late, windows this closed, oldest first)."""
    start = ts - ts % size
    state.last_arrival = arrival_ms
    if start < state.closed_until:
        return True, []
    window = state.open.get(start)
    if window is None:
        window = state.open[start] = {}
    for name, value in metrics.items():
        agg = window.get(name)
        if agg is None:
            window[name] = [ts, value, value]
            continue
        agg.append(value)
        if ts >= agg[0]:  # `last` is the latest event time; a tie goes to the later arrival
            agg[0] = ts
            agg[1] = value
    if ts <= state.max_ts:
        return False, []
    state.max_ts = ts
    watermark = ts - grace
    if watermark < state.closed_until + size:
        return False, []  # fast path: no window can have closed
    return False, _close_until(state, watermark, size)


def close_idle(
    state: DeviceState, now_ms: int, size: int, grace: int, idle: int, since: int = 0
) -> list[Closed]:
    """The idle timer: close what the device's silence says is over (see the module's
    rule 2), if it has been silent for ``idle``.

    Silence counts from ``since`` at the earliest (the takeover of its partition): a
    worker that was down for a while has the device's backlog still to read, and its
    last arrival is old only because nobody was reading."""
    if not state.open or now_ms - max(state.last_arrival, since) < idle:
        return []
    # Moved on by its silence since it last spoke, not since the takeover (the partition
    # is read to its end: nothing newer of it is waiting), and never past the wall clock
    # (a device whose clock runs ahead waits for it, as it always did).
    moved_on = min(now_ms, state.max_ts + (now_ms - state.last_arrival))
    return _close_until(state, moved_on - grace, size)


def idle_due(state: DeviceState, size: int, grace: int, idle: int) -> int:
    """The earliest wall time :func:`close_idle` can close a window of ``state`` (which
    has open windows): the device silent for ``idle`` and for long enough that its
    oldest window's end plus the grace is behind its newest event time plus that
    silence. A later ``since`` only moves it later."""
    end = min(state.open) + size + grace
    return max(state.last_arrival + max(idle, end - state.max_ts), end)


def _close_until(state: DeviceState, limit: int, size: int) -> list[Closed]:
    """Close every open window whose end is at or before ``limit``, oldest first."""
    closed: list[Closed] = []
    for start in sorted(state.open):
        end = start + size
        if end > limit:
            break
        closed.append(Closed(start, end, state.open.pop(start)))
        state.closed_until = end
    return closed


def device_window_record(
    device_id: str, kind: str, district: str, site: str, window: Closed
) -> dict[str, Any]:
    """The contract's device window aggregate."""
    return {
        "device_id": device_id,
        "kind": kind,
        "district": district,
        "site": site,
        "window_start": window.start,
        "window_end": window.end,
        "metrics": {name: _stats(a) for name, a in window.aggregates.items()},
    }


def _stats(agg: list[Any]) -> dict[str, float]:
    values = agg[FIRST_VALUE:]
    return {
        "count": len(values),
        "min": min(values),
        "max": max(values),
        "mean": sum(values) / len(values),
        "last": agg[LAST],
    }


# --- the p95 sketch ------------------------------------------------------------------------
def sketch_key(value: float) -> int:
    """Bucket of ``value``: sign times (1 + log-gamma index of its magnitude); 0 for ~0."""
    magnitude = abs(value)
    if magnitude < _ZERO:
        return 0
    index = math.ceil(math.log(magnitude) / _LOG_GAMMA)
    # The offset keeps every non-zero key away from 0 (indexes are negative for
    # magnitudes below 1); the key's sign is the value's sign.
    return (index + _OFFSET) if value > 0 else -(index + _OFFSET)


def _bucket_value(key: int) -> float:
    if key == 0:
        return 0.0
    index = abs(key) - _OFFSET
    magnitude = 2 * _GAMMA**index / (_GAMMA + 1)
    return magnitude if key > 0 else -magnitude


def sketch_add(sketch: dict[int, int], values: list[float]) -> None:
    for value in values:
        key = sketch_key(value)
        sketch[key] = sketch.get(key, 0) + 1


def sketch_quantile(sketch: dict[int, int], q: float) -> float:
    """Nearest-rank quantile estimate: the value of rank ceil(q * n)."""
    total = sum(sketch.values())
    rank = max(1, math.ceil(q * total))
    seen = 0
    for key in sorted(sketch, key=_bucket_value):
        seen += sketch[key]
        if seen >= rank:
            return _bucket_value(key)
    raise ValueError("empty sketch")


# --- district windows --------------------------------------------------------------------
class DistrictWindow:
    __slots__ = ("devices", "first_arrival", "metrics", "parts")

    def __init__(self, first_arrival: int) -> None:
        self.first_arrival = first_arrival
        self.devices: set[str] = set()
        # (device_id, device window start) already added: a device window delivered
        # twice (at-least-once, after a crash) is counted once
        self.parts: set[tuple[str, int]] = set()
        # per metric: [count, min, max, sum, sketch]
        self.metrics: dict[str, list[Any]] = {}


class DistrictState:
    """One (district, kind): open district windows and each device's progress.

    ``applied`` is the offset of the last input message in this state (the input is
    keyed by district and kind, so one partition feeds it): see :class:`DeviceState`.
    """

    __slots__ = ("applied", "closed_until", "open", "progress")

    def __init__(self) -> None:
        self.closed_until = 0
        self.open: dict[int, DistrictWindow] = {}
        # device_id -> end of the latest device window it delivered
        self.progress: dict[str, int] = {}
        self.applied = -1

    def to_json(self) -> list[Any]:
        windows = [
            [
                start,
                w.first_arrival,
                sorted(w.devices),
                {m: [a[0], a[1], a[2], a[3], list(a[4].items())] for m, a in w.metrics.items()},
                sorted(w.parts),
            ]
            for start, w in self.open.items()
        ]
        return [self.closed_until, windows, self.progress, self.applied]

    @classmethod
    def from_json(cls, doc: list[Any]) -> DistrictState:
        state = cls()
        state.closed_until = doc[0]
        for start, first, devices, metrics, parts in doc[1]:
            window = DistrictWindow(first)
            window.devices = set(devices)
            window.parts = {(d, int(s)) for d, s in parts}
            window.metrics = {
                m: [a[0], a[1], a[2], a[3], {int(k): n for k, n in a[4]}]
                for m, a in metrics.items()
            }
            state.open[int(start)] = window
        state.progress = dict(doc[2])
        state.applied = doc[3]
        return state


def add_device_window(
    state: DistrictState,
    device_id: str,
    start: int,
    end: int,
    aggs: dict[str, list[Any]],
    arrival_ms: int,
    district_size: int,
) -> bool:
    """Add one closed device window (``aggs`` as :func:`add_reading` built them);
    returns False when its district window has already closed (late). A repeat of a
    device window already added is ignored."""
    if end > state.progress.get(device_id, 0):
        state.progress[device_id] = end
    dstart = start - start % district_size
    if dstart < state.closed_until:
        return False
    window = state.open.get(dstart)
    if window is None:
        window = state.open[dstart] = DistrictWindow(arrival_ms)
    part = (device_id, start)
    if part in window.parts:
        return True
    window.parts.add(part)
    window.devices.add(device_id)
    for name, a in _upgrade(aggs).items():
        values = a[FIRST_VALUE:]
        low, high = min(values), max(values)
        acc = window.metrics.get(name)
        if acc is None:
            acc = window.metrics[name] = [0, low, high, 0.0, {}]
        acc[0] += len(values)
        if low < acc[1]:
            acc[1] = low
        if high > acc[2]:
            acc[2] = high
        acc[3] += sum(values)
        sketch_add(acc[4], values)
    return True


def close_districts(
    state: DistrictState,
    now_ms: int,
    district_size: int,
    grace: int,
    wait: int,
    registered: set[str] | None,
) -> list[tuple[int, DistrictWindow]]:
    """District windows ready to emit, oldest first (see the module's rules)."""
    closed: list[tuple[int, DistrictWindow]] = []
    for dstart in sorted(state.open):
        end = dstart + district_size
        window = state.open[dstart]
        # A device's windows close in order, so one that delivered a window ending at
        # or after `end` has nothing more for this district window.
        progress = state.progress
        everyone_past = bool(registered) and all(
            progress.get(d, 0) >= end
            for d in registered  # type: ignore[union-attr]
        )
        timed_out = now_ms >= end + grace + wait and now_ms >= window.first_arrival + wait
        if not (everyone_past or timed_out):
            break  # windows close in order
        closed.append((dstart, state.open.pop(dstart)))
        state.closed_until = end
    return closed


def district_window_record(
    district: str, kind: str, start: int, size: int, window: DistrictWindow
) -> dict[str, Any]:
    """The contract's district window aggregate."""
    return {
        "district": district,
        "kind": kind,
        "window_start": start,
        "window_end": start + size,
        "devices": len(window.devices),
        "metrics": {
            name: {
                "count": a[0],
                "min": a[1],
                "max": a[2],
                "mean": a[3] / a[0],
                "p95": sketch_quantile(a[4], 0.95),
            }
            for name, a in window.metrics.items()
        },
    }
