"""Replay recorded telemetry through a rule set, offline, and list the episodes it raises.

``citystreams backtest --rules FILE --input FILE`` uses this to judge a rule change
before it is deployed. The input is what ``telemetry.raw`` carries (JSON Lines of
envelopes or gateway batches), and it goes through the worker's own core
(:class:`streams.core.Pipeline`): validation, de-duplication on ``seq``, the device
registry, event-time windows (a reading behind its device's watermark is late, as in the
worker) and the rules, in file order. Recorded event times are not compared with the
wall clock, and offline detection, which runs on the wall clock, is not replayed.

Without ``--registry`` the device records are the recording's own, found next to it
(:func:`registry_beside`): ``classroom-co2.jsonl`` goes with ``classroom-devices.jsonl``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from streams.core import Pipeline
from streams.metrics import PREFIX, Metrics
from streams.settings import Settings
from streams.stages.enrich import Registry
from streams.stages.rules import SEVERITY_RANK, RuleSet
from streams.stages.validate import LATE, UNKNOWN_DEVICE, Limits

# Recorded data is old: only the size limit of the live pipeline applies.
_LIMITS = Limits(max_bytes=1 << 20, max_future_ms=1 << 62, max_past_ms=1 << 62)


def registry_beside(recording: Path) -> Path | None:
    """The device records that go with ``recording``, from its folder, or None.

    The first file that exists of ``<prefix>-devices.jsonl`` (then ``.csv``) for the
    leading ``-``-separated parts of the recording's name, longest first, then
    ``devices.jsonl`` (``.csv``): ``classroom-co2.jsonl`` looks for
    ``classroom-co2-devices.jsonl``, ``classroom-devices.jsonl``, ``devices.jsonl``.
    """
    parts = recording.stem.split("-")
    names = ["-".join(parts[:n]) + "-devices" for n in range(len(parts), 0, -1)]
    for name in [*names, "devices"]:
        for suffix in (".jsonl", ".csv"):
            path = recording.parent / (name + suffix)
            if path.is_file() and not path.samefile(recording):
                return path
    return None


@dataclass(slots=True)
class EpisodeSummary:
    alert_id: str
    device_id: str
    rules: list[str]
    severity: str
    starts_at: int
    ends_at: int | None
    summary: str
    events: int = 1


@dataclass(slots=True)
class BacktestResult:
    episodes: list[EpisodeSummary] = field(default_factory=list)
    readings: int = 0
    rejected: int = 0  # invalid (dead-lettered with a reason other than the two below)
    unknown_devices: int = 0
    late: int = 0
    duplicates: int = 0


class _Line(NamedTuple):
    """One line of the recording as a record of ``telemetry.raw``."""

    offset: int
    key: bytes | None
    value: bytes


def backtest(ruleset: RuleSet, registry: Registry, lines: Iterable[bytes]) -> BacktestResult:
    """Every line through the worker's core, on one partition; its alert events summed up
    per episode."""
    metrics = Metrics()
    core = Pipeline(Settings(partitions=1, emit_enriched=False), ruleset, metrics, registry)
    core.ingest.limits = _LIMITS
    core.assign({}, 0)  # nothing to restore: a worker's first start
    raw = core.topics.raw
    result = BacktestResult()
    by_id: dict[str, EpisodeSummary] = {}
    now = time.time_ns() // 1_000_000  # (arrival times only: nothing here is judged on them)
    for offset, line in enumerate(lines):
        if not line.strip():
            continue
        core.process(raw, 0, (_Line(offset, None, line),), now)
        taken = core.outputs.take()
        for _, value, _ in taken.get(core.topics.deadletter, ()):
            _count_deadletter(result, orjson.loads(value or b"{}"))
        for _, value, _ in taken.get(core.topics.alerts, ()):
            _add_event(result, by_id, orjson.loads(value or b"{}"))
    total = metrics.registry.get_sample_value(f"{PREFIX}_readings_in_total")
    duplicates = metrics.registry.get_sample_value(f"{PREFIX}_duplicates_total")
    result.readings, result.duplicates = int(total or 0), int(duplicates or 0)
    return result


def _count_deadletter(result: BacktestResult, record: dict[str, Any]) -> None:
    reason = record.get("reason")
    if reason == UNKNOWN_DEVICE:
        result.unknown_devices += 1
    elif reason == LATE:
        result.late += 1
    else:
        result.rejected += 1


def _add_event(result: BacktestResult, by_id: dict[str, EpisodeSummary], e: dict[str, Any]) -> None:
    episode = by_id.get(e["alert_id"])
    if episode is None:
        episode = EpisodeSummary(
            e["alert_id"],
            e["device_id"],
            [e["rule"]],
            e["severity"],
            e["starts_at"],
            None,
            e["summary"],
        )
        by_id[e["alert_id"]] = episode
        result.episodes.append(episode)
        return
    episode.events += 1
    if e["rule"] not in episode.rules:
        episode.rules.append(e["rule"])
    if SEVERITY_RANK[e["severity"]] > SEVERITY_RANK[episode.severity]:
        episode.severity, episode.summary = e["severity"], e["summary"]
    if e["status"] == "resolved":
        episode.ends_at = e["ends_at"]


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _duration(ms: int) -> str:
    s = ms // 1000
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def report(result: BacktestResult) -> str:
    """The episodes, one line each, then totals per rule."""
    lines = [f"{'start (UTC)':19}  {'duration':>8}  {'severity':8}  {'rule':28}  device: summary"]
    for e in sorted(result.episodes, key=lambda e: (e.starts_at, e.device_id)):
        length = "open" if e.ends_at is None else _duration(e.ends_at - e.starts_at)
        rules = "+".join(e.rules)
        lines.append(
            f"{_when(e.starts_at)}  {length:>8}  {e.severity:8}  {rules:28}  "
            f"{e.device_id}: {e.summary}"
        )
    per_rule: dict[str, int] = {}
    for e in result.episodes:
        per_rule[e.rules[0]] = per_rule.get(e.rules[0], 0) + 1
    totals = ", ".join(f"{rule} {n}" for rule, n in sorted(per_rule.items())) or "none"
    lines.append(
        f"{len(result.episodes)} episode(s) from {result.readings} reading(s): {totals}"
        + (f"; {result.rejected} rejected" if result.rejected else "")
        + (f"; {result.unknown_devices} of unknown devices" if result.unknown_devices else "")
        + (f"; {result.duplicates} duplicate(s)" if result.duplicates else "")
        + (f"; {result.late} late" if result.late else "")
    )
    return "\n".join(lines)


def describe_alert(record: dict[str, Any]) -> str:
    """One alert event as one terminal line (``citystreams alerts tail``)."""
    when = record.get("ends_at") if record.get("status") == "resolved" else record.get("at")
    stamp = _when(int(when)) if isinstance(when, int) else "-" * 19
    status = str(record.get("status", "?")).upper()
    return (
        f"{stamp}  {status:8}  {record.get('severity', '?'):8}  {record.get('rule', '?'):28}  "
        f"{record.get('device_id', '?')}: {record.get('summary', '')}"
        f"  ({record.get('alert_id', '?')})"
    )
