"""The rule engine: readings in, alert events out, in event time, per device.

No faust here. :func:`evaluate` runs the rules of a device's kind on one reading and
appends the alert events it causes; the state it keeps per device (:class:`AlertState`)
is small, encodable and made durable by the pipeline like window state.

Lifecycle, per device and *episode group* (a rule's own name, or the rule it
``escalates``):

- a rule becomes *active* when its condition has held for ``for`` (event time) and
  stops being active when its clear condition (hysteresis: the ``clear`` level) has
  held for ``clear_for``; a reading that breaks the condition while it is pending
  starts the wait again;
- an episode opens (``status: firing``) when the first rule of its group becomes
  active; it carries one ``alert_id``, derived from the device, the group and the
  start, so re-processing after a crash gives the same id;
- a change of the highest active severity within the group is another ``firing``
  event of the same episode (escalation, or de-escalation);
- the episode resolves (``status: resolved``, ``ends_at`` = the event time of the
  reading that cleared it) when no rule of the group is active any more.

A device's readings are evaluated in event-time order: one older than the latest one a
rule has seen for that device does not change the rule (it still counts in windows).

``for`` and ``clear_for`` never span a gap in a device's data: when more than ``k``
times its interval (the longer of its ``heartbeat_s`` and its learned cadence) passed in
event time
since a rule's previous reading, the rule's pending condition, or an active rule's
clear condition, starts again from this reading, as Prometheus resets a pending alert
whose series went stale. Three minutes above a threshold, an hour without data and
three more minutes above it have not held for five minutes.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from streams.stages.enrich import Device
from streams.stages.ingest import StateStore
from streams.stages.routing import device_partition
from streams.stages.rules import Rule, RuleSet
from streams.stages.validate import Reading

BUCKETS = 12  # a mean_over window is kept as this many partial sums
MIN_GAPS = 3  # gaps learned whatever their length (after them, an outage is not learned)


@dataclass(slots=True)
class RuleState:
    since: int = -1  # event time the condition started holding; -1: not holding
    active: bool = False
    clear_since: int = -1  # event time the clear condition started holding
    last_ts: int = -1  # latest event time evaluated
    value: float = 0.0  # latest value, for the event
    bound: float = 0.0  # the threshold it was compared with, for the event
    prev_ts: int = -1  # rate rules: the previous reading
    prev: float = 0.0
    n: int = 0  # band rules: EWMA of the mean and the variance, and samples seen
    mean: float = 0.0
    var: float = 0.0
    # mean_over rules: start -> [sum, n]. None for the others: an empty dict per rule
    # and device would cost 64 bytes each (~200 bytes a device).
    buckets: dict[int, list[float]] | None = None

    def to_json(self) -> list[Any]:
        return [
            self.since,
            self.active,
            self.clear_since,
            self.last_ts,
            self.value,
            self.bound,
            self.prev_ts,
            self.prev,
            self.n,
            self.mean,
            self.var,
            [[k, v[0], v[1]] for k, v in (self.buckets or {}).items()],
        ]

    @classmethod
    def from_json(cls, doc: list[Any]) -> RuleState:
        s = cls(*doc[:11])
        if doc[11]:
            s.buckets = {int(k): [total, n] for k, total, n in doc[11]}
        return s


@dataclass(slots=True)
class Episode:
    alert_id: str
    group: str
    rule: str
    severity: str
    starts_at: int

    def to_json(self) -> list[Any]:
        return [self.alert_id, self.group, self.rule, self.severity, self.starts_at]


@dataclass(slots=True)
class AlertState:
    rules: dict[str, RuleState] = field(default_factory=dict)
    episodes: dict[str, Episode] = field(default_factory=dict)  # by group
    # The device's reporting cadence in event time, learned for devices without a
    # heartbeat_s (a gap longer than k of them restarts `for`: see the module's doc).
    seen_ts: int = -1  # latest event time evaluated
    cadence: float = 0.0  # mean gap, ms, of the last ~10 ordinary gaps
    gaps: int = 0

    def to_json(self) -> list[Any]:
        return [
            {name: rs.to_json() for name, rs in self.rules.items()},
            [e.to_json() for e in self.episodes.values()],
            [self.seen_ts, self.cadence, self.gaps],
        ]

    @classmethod
    def from_json(cls, doc: list[Any]) -> AlertState:
        state = cls()
        state.rules = {name: RuleState.from_json(rs) for name, rs in doc[0].items()}
        state.episodes = {e[1]: Episode(*e) for e in doc[1]}
        if len(doc) > 2:  # (state written before the cadence was kept has none)
            state.seen_ts, state.cadence, state.gaps = doc[2]
        return state

    def max_gap(self, device: Device, k: float) -> float | None:
        """The longest gap in event time that ``for`` may span (None: not known yet):
        ``k`` times the longer of its ``heartbeat_s`` and its learned cadence. (The
        learned one counts too: a registry may give a heartbeat for the wall clock,
        as ``up``'s sped-up city does, and a device may report less often than
        announced.)"""
        # (From its first gap on: a sped-up heartbeat must not block `for` for long.)
        base = max(self.cadence, (device.heartbeat_s or 0.0) * 1000.0)
        return k * base if base > 0 else None

    def learn(self, ts: int, k: float) -> None:
        """The device reported at ``ts``: learn its cadence from ordinary gaps (one past
        ``k`` learned cadences is an outage, not the cadence)."""
        gap = ts - self.seen_ts
        if gap <= 0:
            return
        if self.seen_ts >= 0 and (self.gaps < MIN_GAPS or gap <= k * self.cadence):
            self.cadence += (gap - self.cadence) / min(self.gaps + 1, 10)
            self.gaps += 1
        self.seen_ts = ts


def encode_alerts(state: AlertState) -> bytes:
    return orjson.dumps(state.to_json())


def decode_alerts(raw: bytes) -> AlertState:
    return AlertState.from_json(orjson.loads(raw))


def alert_id(device_id: str, group: str, starts_at: int) -> str:
    """Stable: the same episode gets the same id when its readings are processed again."""
    return hashlib.blake2b(f"{device_id}|{group}|{starts_at}".encode(), digest_size=8).hexdigest()


def alert_record(
    *,
    alert_id: str,
    rule: str,
    status: str,
    severity: str,
    device: Device,
    metric: str | None,
    value: float | None,
    threshold: float | None,
    starts_at: int,
    ends_at: int | None,
    summary: str,
    at: int,
    affected_children: int | None = None,
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "alert_id": alert_id,
        "rule": rule,
        "status": status,
        "severity": severity,
        "device_id": device.device_id,
        "kind": device.kind,
        "district": device.district,
        "site": device.site,
        "metric": metric,
        "value": value,
        "threshold": threshold,
        "starts_at": starts_at,
        "ends_at": ends_at,
        "summary": summary,
        "at": at,
    }
    if affected_children is not None:
        record["affected_children"] = affected_children
    return record


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _derive(rule: Rule, rs: RuleState, ts: int, v: float) -> float | None:
    """The quantity the condition tests (``None`` while there is not enough history);
    sets ``rs.value`` and ``rs.bound`` for the event."""
    cond = rule.condition
    if rule.mean_over_ms is not None:
        size = max(1, rule.mean_over_ms // BUCKETS)
        start = ts - ts % size
        buckets = rs.buckets
        if buckets is None:
            buckets = rs.buckets = {}
        bucket = buckets.setdefault(start, [0.0, 0.0])
        bucket[0] += v
        bucket[1] += 1
        horizon = ts - rule.mean_over_ms
        for old in [k for k in buckets if k + size <= horizon]:
            del buckets[old]
        total = sum(b[0] for b in buckets.values())
        count = sum(b[1] for b in buckets.values())
        v = total / count
    if cond in ("rate_above", "rate_below"):
        prev_ts, prev = rs.prev_ts, rs.prev
        rs.prev_ts, rs.prev = ts, v
        if prev_ts < 0 or ts <= prev_ts:
            return None
        v = (v - prev) / (ts - prev_ts) * 60_000.0  # per minute
    if cond == "band":
        # z against the band learned so far; the band then learns this reading, slowly
        # while it is outside (so an anomaly does not teach the band it is normal).
        std = math.sqrt(rs.var)
        z = abs(v - rs.mean) / std if std > 1e-12 else (0.0 if v == rs.mean else math.inf)
        ready = rs.n >= rule.min_samples
        if rs.n == 0:
            rs.mean = v
        else:
            a = rule.alpha if (not ready or z <= rule.threshold) else rule.alpha / 10
            diff = v - rs.mean
            rs.mean += a * diff
            rs.var = (1 - a) * (rs.var + a * diff * diff)
        rs.n += 1
        if not ready:
            return None
        rs.value = v
        edge = (rule.clear if rs.active else rule.threshold) * std
        rs.bound = rs.mean - edge if v < rs.mean else rs.mean + edge
        return z
    rs.value = v
    rs.bound = rule.clear if rs.active else rule.threshold
    return v


def _holds(rule: Rule, active: bool, x: float) -> bool:
    level = rule.clear if active else rule.threshold
    cond = rule.condition
    if cond in ("above", "rate_above", "band"):
        return x > level
    if cond in ("below", "rate_below"):
        return x < level
    return abs(x) > level  # outside


NO_CONTEXT: Mapping[str, Mapping[str, float]] = {}
NO_VALUES: Mapping[str, float] = {}


def evaluate(
    state: AlertState,
    rules: tuple[Rule, ...],
    device: Device,
    ts: int,
    metrics: dict[str, float],
    out: list[dict[str, Any]],
    latest: Mapping[str, Mapping[str, float]] = NO_CONTEXT,
    gap_k: float = 3.0,
) -> bool:
    """Run ``rules`` on one reading; append alert events to ``out``. Returns whether
    ``state`` changed (and must be written). ``latest`` holds other devices' latest
    values of occupancy metrics (for rules with an ``occupancy`` condition); a gap of
    more than ``gap_k`` intervals restarts ``for`` and ``clear_for`` (the rules file's
    offline ``k``)."""
    changed = False
    groups: list[str] = []
    max_gap = state.max_gap(device, gap_k)
    state.learn(ts, gap_k)
    for rule in rules:
        v = metrics.get(rule.metric)
        if v is None:
            continue
        if rule.relative_to is not None:
            ref = metrics.get(rule.relative_to)
            if ref is None:
                continue
            v = v - ref
        rs = state.rules.get(rule.name)
        if rs is None:
            rs = state.rules[rule.name] = RuleState()
        if ts < rs.last_ts:
            continue  # older than what this rule has seen: see the module's docstring
        if max_gap is not None and rs.last_ts >= 0 and ts - rs.last_ts > max_gap:
            rs.since = rs.clear_since = -1  # a gap in the data: the waits start again
        rs.last_ts = ts
        changed = True
        x = _derive(rule, rs, ts, float(v))
        if x is None:
            continue
        holding = _holds(rule, rs.active, x)
        if holding and rule.schedule is not None and not rule.schedule.contains(ts):
            holding = False
        if holding and rule.occupancy is not None and device.parent:
            level = latest.get(device.parent, NO_VALUES).get(rule.occupancy[0])
            if level is not None and level < rule.occupancy[1]:
                holding = False  # the room is empty (unknown counts as occupied)
        was = rs.active
        if holding:
            rs.clear_since = -1
            if rs.since < 0:
                rs.since = ts
            if not rs.active and ts - rs.since >= rule.for_ms:
                rs.active = True
        elif rs.active:
            if rs.clear_since < 0:
                rs.clear_since = ts
            if ts - rs.clear_since >= rule.clear_for_ms:
                rs.active, rs.since, rs.clear_since = False, -1, -1
        else:
            rs.since = -1
        if rs.active != was and rule.group not in groups:
            groups.append(rule.group)
    for group in groups:
        _episode(state, rules, group, device, ts, out)
    return changed


def _episode(
    state: AlertState,
    rules: tuple[Rule, ...],
    group: str,
    device: Device,
    ts: int,
    out: list[dict[str, Any]],
) -> None:
    members = [r for r in rules if r.group == group]
    active = [r for r in members if (rs := state.rules.get(r.name)) is not None and rs.active]
    episode = state.episodes.get(group)
    if active:
        top = max(active, key=lambda r: r.rank)  # the first of the highest severity
        rs = state.rules[top.name]
        if episode is None:
            starts = min(state.rules[r.name].since for r in active)
            episode = Episode(alert_id(device.device_id, group, starts), group, "", "", starts)
            state.episodes[group] = episode
        elif episode.severity == top.severity:
            return
        episode.rule, episode.severity = top.name, top.severity
        status, ends_at = "firing", None
    else:
        if episode is None:
            return
        top = next(r for r in members if r.name == episode.rule)
        rs = state.rules[top.name]
        del state.episodes[group]
        status, ends_at = "resolved", ts
    fields = {
        "device_id": device.device_id,
        "kind": device.kind,
        "district": device.district,
        "site": device.site,
        "metric": top.metric,
        "value": rs.value,
        "threshold": rs.bound,
        "rule": top.name,
        "severity": top.severity,
    }
    out.append(
        alert_record(
            alert_id=episode.alert_id,
            rule=top.name,
            status=status,
            severity=top.severity,
            device=device,
            metric=top.metric,
            value=_finite(rs.value),
            threshold=_finite(rs.bound),
            starts_at=episode.starts_at,
            ends_at=ends_at,
            summary=top.render(fields),
            at=ts,
        )
    )


class Alerting:
    """The rules stage: accepted readings in, alert events out (as records).

    ``states`` is per device, kept with the device's partition (like its windows)."""

    def __init__(
        self,
        ruleset: RuleSet,
        states: StateStore[AlertState],
        partitions: int,
        latest: Mapping[str, Mapping[str, float]] = NO_CONTEXT,
    ) -> None:
        self.ruleset = ruleset
        self.states = states
        self.partitions = partitions
        self.latest = latest  # occupancy metrics per device, from every partition
        # Devices with an open episode: what the episode gauges count (the states of
        # the others may wait encoded: see streams.state.DurableMap).
        self.with_episodes: set[str] = set()

    def on_accepted(
        self, accepted: list[tuple[Reading, Device]], out: list[dict[str, Any]]
    ) -> None:
        for_kind = self.ruleset.for_kind
        gap_k = self.ruleset.offline_k
        for reading, device in accepted:
            rules = for_kind(device.kind)
            if not rules:
                continue
            state = self.states.get(device.device_id)
            if state is None:
                state = AlertState()
            if evaluate(state, rules, device, reading.ts, reading.metrics, out, self.latest, gap_k):
                self.states.set(
                    device.device_id, state, device_partition(device.device_id, self.partitions)
                )
                if state.episodes:
                    self.with_episodes.add(device.device_id)
                else:
                    self.with_episodes.discard(device.device_id)
