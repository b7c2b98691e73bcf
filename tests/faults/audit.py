"""The fault battery's auditor: what the pipeline should have written, recomputed from
the producer's ledger alone, and a count of what it lost, duplicated or got wrong.

Independent of the pipeline's code on purpose: windows are recomputed here with plain
lists (not streams.stages.windows), alert episodes with the pure rule engine replayed per
device in sequence order (what `citystreams backtest` does: the live pipeline must
agree with an offline replay of exactly the acknowledged readings).

Terms, per output:
- **lost**: expected and absent (or, for a window, fewer readings counted than sent);
- **double-counted**: a window counting more readings than were sent to it;
- **wrong**: present with values that differ from the recomputation, or not expected;
- **duplicated**: the same record (same key, identical content) written again, which
  consumers de-duplicate on the contract's keys (at-least-once after a crash).
"""

from __future__ import annotations

import base64
import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from streams.stages.alerts import AlertState, evaluate
from streams.stages.enrich import Registry
from streams.stages.rules import RuleSet
from streams.tools.publish import device_messages


@dataclass(frozen=True, slots=True)
class Reading:
    """One reading the broker acknowledged to the load generator."""

    device_id: str
    seq: int
    ts: int
    metrics: dict[str, float]


@dataclass(slots=True)
class Counts:
    expected: int = 0
    got: int = 0
    lost: int = 0
    double_counted: int = 0
    wrong: int = 0
    duplicated: int = 0
    examples: list[str] = field(default_factory=list)

    def problem(self, kind: str, text: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        if len(self.examples) < 5:
            self.examples.append(f"{kind}: {text}")

    @property
    def clean(self) -> bool:
        return not (self.lost or self.double_counted or self.wrong)


@dataclass(slots=True)
class Audit:
    readings: Counts
    device_windows: Counts
    district_windows: Counts
    alerts: Counts

    @property
    def clean(self) -> bool:
        return all(c.clean for c in self.parts())

    @property
    def duplicated(self) -> int:
        return sum(c.duplicated for c in self.parts())

    def parts(self) -> list[Counts]:
        return [self.readings, self.device_windows, self.district_windows, self.alerts]

    def summary(self) -> str:
        names = ["readings", "device windows", "district windows", "alert events"]
        lines = []
        for name, c in zip(names, self.parts(), strict=True):
            lines.append(
                f"{name}: expected {c.expected}, got {c.got}, lost {c.lost}, "
                f"double-counted {c.double_counted}, wrong {c.wrong}, duplicated {c.duplicated}"
                + "".join(f"\n    {e}" for e in c.examples)
            )
        return "\n".join(lines)


def _first_of(
    records: list[dict[str, Any]], key: Callable[[dict[str, Any]], Any], c: Counts
) -> dict[Any, dict[str, Any]]:
    """Each record's first occurrence by ``key``; an identical repeat counts as
    duplicated, a different one as wrong."""
    first: dict[Any, dict[str, Any]] = {}
    for r in records:
        k = key(r)
        if k not in first:
            first[k] = r
        elif r == first[k]:
            c.duplicated += 1
        else:
            c.problem("wrong", f"{k} written twice, differently")
    return first


def _close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def expected_device_windows(
    ledger: list[Reading], window_ms: int
) -> dict[tuple[str, int], dict[str, dict[str, Any]]]:
    values: dict[tuple[str, int], dict[str, list[tuple[int, float]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for r in ledger:
        start = r.ts - r.ts % window_ms
        for name, v in r.metrics.items():
            values[(r.device_id, start)][name].append((r.ts, float(v)))
    return {
        key: {
            name: {
                "count": len(vs),
                "min": min(v for _, v in vs),
                "max": max(v for _, v in vs),
                "mean": sum(v for _, v in vs) / len(vs),
                # the latest event time's value; None where two readings share it
                # (which one is "last" is then the pipeline's choice)
                "last": _latest(vs),
                "values": [v for _, v in vs],
            }
            for name, vs in metrics.items()
        }
        for key, metrics in values.items()
    }


def _latest(values: list[tuple[int, float]]) -> float | None:
    ts, value = max(values)
    return value if sum(1 for t, _ in values if t == ts) == 1 else None


def district_keys(
    expected_devices: dict[tuple[str, int], dict[str, dict[str, Any]]],
    fleet: list[dict[str, Any]],
    district_ms: int,
) -> set[tuple[str, str, int]]:
    where = {d["device_id"]: (d["district"], d["kind"]) for d in fleet}
    return {
        (*where[device_id], start - start % district_ms) for device_id, start in expected_devices
    }


def audit_readings(
    ledger: list[Reading],
    enriched: list[dict[str, Any]],
    deadletters: list[dict[str, Any]] | None = None,
    repeated: set[tuple[str, int]] | None = None,
) -> Counts:
    """Every acknowledged reading is published enriched (at least once); a lost one
    is named with its dead-letter reason if it was dead-lettered, and as sent twice if
    it is one of ``repeated`` (device, seq) (then the pipeline took both copies for
    repeats, or lost the copy it kept)."""
    c = Counts(expected=len(ledger), got=len(enriched))
    seen: dict[tuple[str, int], int] = defaultdict(int)
    for e in enriched:
        seen[(e["device_id"], e["seq"])] += 1
    reasons: dict[tuple[str, int], str] = {}
    for d in deadletters or []:
        try:
            doc = orjson.loads(base64.b64decode(d["payload_b64"]))
            reasons[(doc["device_id"], doc["seq"])] = d["reason"]
        except (ValueError, KeyError, TypeError):
            continue
    for r in ledger:
        n = seen.get((r.device_id, r.seq), 0)
        if n == 0:
            why = reasons.get((r.device_id, r.seq), "not dead-lettered either")
            if repeated is not None:
                why += ", sent twice" if (r.device_id, r.seq) in repeated else ", sent once"
            c.problem("lost", f"{r.device_id} seq {r.seq} ({why})")
        else:
            c.duplicated += n - 1
    wanted = {(r.device_id, r.seq) for r in ledger}
    for key in seen:
        if key not in wanted:
            c.problem("wrong", f"{key} was never acknowledged")
    return c


def audit_device_windows(
    expected: dict[tuple[str, int], dict[str, dict[str, Any]]], got: list[dict[str, Any]]
) -> Counts:
    c = Counts(expected=len(expected), got=len(got))
    first = _first_of(got, lambda w: (w["device_id"], w["window_start"]), c)
    for key, w in first.items():
        want = expected.get(key)
        if want is None:
            c.problem("wrong", f"{key} not expected")
            continue
        for name, agg in want.items():
            have = w["metrics"].get(name)
            if have is None or have["count"] < agg["count"]:
                c.problem("lost", f"{key} {name}: {have and have['count']} < {agg['count']}")
            elif have["count"] > agg["count"]:
                c.problem("double_counted", f"{key} {name}: {have['count']} > {agg['count']}")
            elif not all(
                _close(have[k], agg[k])
                for k in ("min", "max", "mean", "last")
                if agg[k] is not None
            ):
                c.problem("wrong", f"{key} {name}: {have} != {agg}")
    for key in expected:
        if key not in first:
            c.problem("lost", f"window {key} never written")
    return c


def audit_district_windows(
    expected_devices: dict[tuple[str, int], dict[str, dict[str, Any]]],
    fleet: list[dict[str, Any]],
    district_ms: int,
    got: list[dict[str, Any]],
) -> Counts:
    where = {d["device_id"]: (d["district"], d["kind"]) for d in fleet}
    values: dict[tuple[str, str, int], dict[str, list[float]]] = defaultdict(
        lambda: defaultdict(list)
    )
    members: dict[tuple[str, str, int], set[str]] = defaultdict(set)
    for (device_id, start), metrics in expected_devices.items():
        district, kind = where[device_id]
        key = (district, kind, start - start % district_ms)
        members[key].add(device_id)
        for name, agg in metrics.items():
            values[key][name] += agg["values"]
    c = Counts(expected=len(values), got=len(got))
    first = _first_of(got, lambda w: (w["district"], w["kind"], w["window_start"]), c)
    for key, w in first.items():
        if key not in values:
            c.problem("wrong", f"{key} not expected")
            continue
        if w["devices"] != len(members[key]):
            c.problem("wrong", f"{key}: {w['devices']} devices, {len(members[key])} expected")
        for name, vs in values[key].items():
            have = w["metrics"].get(name)
            if have is None or have["count"] < len(vs):
                c.problem("lost", f"{key} {name}: {have and have['count']} < {len(vs)}")
                continue
            if have["count"] > len(vs):
                c.problem("double_counted", f"{key} {name}: {have['count']} > {len(vs)}")
                continue
            p95 = sorted(vs)[math.ceil(0.95 * len(vs)) - 1]
            ok = (
                _close(have["min"], min(vs))
                and _close(have["max"], max(vs))
                and math.isclose(have["mean"], sum(vs) / len(vs), rel_tol=1e-9)
                # a sketch: within 1% of the nearest-rank p95 (streams/stages/windows.py)
                and math.isclose(have["p95"], p95, rel_tol=0.0101, abs_tol=1e-9)
            )
            if not ok:
                c.problem("wrong", f"{key} {name}: {have}")
    for key in values:
        if key not in first:
            c.problem("lost", f"district window {key} never written")
    return c


def expected_alerts(
    ledger: list[Reading], fleet: list[dict[str, Any]], ruleset: RuleSet
) -> list[dict[str, Any]]:
    """Every alert event an offline replay of the ledger raises, per device in seq order."""
    registry = Registry()
    for key, value in device_messages(fleet):
        registry.apply(key, value)
    events: list[dict[str, Any]] = []
    states: dict[str, AlertState] = {}
    for r in sorted(ledger, key=lambda r: (r.device_id, r.seq)):
        device = registry.devices[r.device_id]
        rules = ruleset.for_kind(device.kind)
        if rules:
            state = states.setdefault(r.device_id, AlertState())
            evaluate(state, rules, device, r.ts, dict(r.metrics), events)
    return events


def _alert_key(e: dict[str, Any]) -> tuple[Any, ...]:
    return (e["alert_id"], e["status"], e["severity"], e["at"])


def audit_alerts(expected: list[dict[str, Any]], got: list[dict[str, Any]]) -> Counts:
    """Alert events: one per (episode, status, severity, event time). An episode fired
    twice (re-fired) shows as an unexpected event with a new alert_id: wrong."""
    c = Counts(expected=len(expected), got=len(got))
    want = {_alert_key(e): e for e in expected}
    first = _first_of(got, _alert_key, c)
    for key in first:
        if key not in want:
            c.problem("wrong", f"unexpected alert event {key}")
    for key in want:
        if key not in first:
            c.problem("lost", f"alert event {key} never written")
    return c


def audit(
    ledger: list[Reading],
    fleet: list[dict[str, Any]],
    ruleset: RuleSet,
    window_ms: int,
    district_ms: int,
    outputs: dict[str, list[dict[str, Any]]],
    window_ledger: list[Reading] | None = None,
    repeated: set[tuple[str, int]] | None = None,
) -> Audit:
    """``outputs``: the records of telemetry.enriched, metrics.device, metrics.district
    and alerts, under the keys ``enriched``, ``device``, ``district`` and ``alerts``.
    Windows are expected from ``window_ledger`` (default: the whole ledger)."""
    devices = expected_device_windows(ledger if window_ledger is None else window_ledger, window_ms)
    return Audit(
        readings=audit_readings(ledger, outputs["enriched"], outputs.get("deadletter"), repeated),
        device_windows=audit_device_windows(devices, outputs["device"]),
        district_windows=audit_district_windows(devices, fleet, district_ms, outputs["district"]),
        alerts=audit_alerts(expected_alerts(ledger, fleet, ruleset), outputs["alerts"]),
    )
