"""Alert rules: a declarative TOML file, parsed and checked into frozen :class:`Rule` s.

The shipped defaults are ``streams/stages/default_rules.toml``; ``CITYSTREAMS_RULES`` names a
file that replaces them. A file that cannot be used is refused at start with its line
(where TOML knows it) and the reason: :class:`RulesError`.

A rule::

    [[rule]]
    name = "classroom_co2_high"      # [a-z][a-z0-9_]*, unique
    kind = "classroom_air"           # the device kind it applies to
    metric = "co2_ppm"
    condition = "above"              # above | below | outside | rate_above | rate_below | band
    threshold = 1000.0               # band: how many standard deviations
    clear = 900.0                    # hysteresis: an active rule clears past this
                                     # (default: the threshold)
    for = "5m"                       # the condition must hold this long (event time)
    clear_for = "1m"                 # ...and be cleared this long to resolve (default 0)
    severity = "warning"             # info | warning | critical
    summary = "CO2 {value:.0f} ppm in {site} ({metric} > {threshold:.0f} for {for})"

optional: ``escalates = "<rule>"`` (this rule raises the severity of that rule's episode
rather than opening its own), ``relative_to = "<metric>"`` (the value is metric minus
that metric, e.g. a reefer's temperature minus its set point), ``mean_over = "1h"``
(the value is the mean over that much event time, e.g. EU limit values), ``alpha`` and
``min_samples`` (band rules), ``schedule = {days = "mon-fri", hours = "07:30-16:00",
tz = "Europe/Berlin"}`` (outside it the condition counts as false), ``occupancy =
{metric = "clients", min = 1}`` (the condition counts only while the device's parent
last reported at least ``min`` of that metric, e.g. a classroom's access point has
clients; unknown counts as occupied), ``enabled``.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from datetime import datetime, time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from streams.devices import KINDS

DEFAULT_RULES = Path(__file__).with_name("default_rules.toml")

CONDITIONS = ("above", "below", "outside", "rate_above", "rate_below", "band")
SEVERITIES = ("info", "warning", "critical")
SEVERITY_RANK = {s: i for i, s in enumerate(SEVERITIES)}
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_METRIC = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_KNOWN = {
    "name",
    "kind",
    "metric",
    "condition",
    "threshold",
    "clear",
    "for",
    "clear_for",
    "severity",
    "summary",
    "escalates",
    "relative_to",
    "mean_over",
    "alpha",
    "min_samples",
    "schedule",
    "occupancy",
    "enabled",
    "description",
}
# Fields a summary template may use (format() of an unknown one is refused at load).
SUMMARY_FIELDS = {
    "device_id": "dui-mitte-gs017-r12-air",
    "kind": "classroom_air",
    "district": "Mitte",
    "site": "gs017",
    "metric": "co2_ppm",
    "value": 1180.0,
    "threshold": 1000.0,
    "for": "5m",
    "rule": "classroom_co2_high",
    "severity": "warning",
}


class RulesError(ValueError):
    """A rule file that cannot be used; the message names the file, line and reason."""


@dataclass(frozen=True, slots=True)
class Schedule:
    days: frozenset[int]  # 0 = Monday
    start: time
    end: time
    tz: ZoneInfo

    def contains(self, ts_ms: int) -> bool:
        local = datetime.fromtimestamp(ts_ms / 1000, self.tz)
        return local.weekday() in self.days and self.start <= local.time() < self.end


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    kind: str
    metric: str
    condition: str
    threshold: float
    clear: float
    for_ms: int
    clear_for_ms: int
    severity: str
    summary: str
    for_text: str
    group: str  # the episode this rule belongs to: its own name, or the one it escalates
    relative_to: str | None = None
    mean_over_ms: int | None = None
    alpha: float = 0.05
    min_samples: int = 30
    schedule: Schedule | None = None
    occupancy: tuple[str, float] | None = None  # (parent's metric, minimum)
    line: int = 0

    @property
    def rank(self) -> int:
        return SEVERITY_RANK[self.severity]

    def render(self, fields: dict[str, Any]) -> str:
        try:
            return self.summary.format(**fields, **{"for": self.for_text})
        except (KeyError, ValueError, IndexError):  # checked at load; never fail an alert
            return f"{self.name} on {fields.get('device_id')}"


@dataclass(frozen=True, slots=True)
class RuleSet:
    rules: tuple[Rule, ...]
    by_kind: dict[str, tuple[Rule, ...]] = field(default_factory=dict)
    offline_k: float = 3.0
    offline_severity: str = "warning"
    offline_enabled: bool = True

    @property
    def occupancy_metrics(self) -> frozenset[str]:
        """Metrics whose latest value per device other rules' occupancy conditions read."""
        return frozenset(r.occupancy[0] for r in self.rules if r.occupancy is not None)

    def for_kind(self, kind: str) -> tuple[Rule, ...]:
        return self.by_kind.get(kind, ())


def parse_duration(text: Any, where: str) -> int:
    """``"5m"`` -> 300000 (ms); ``"90s"``, ``"1h"``, ``"500ms"``, ``"1d"``; ``0`` is 0."""
    if text == 0:
        return 0
    if not isinstance(text, str) or not (m := _DURATION.match(text.strip())):
        raise RulesError(f"{where}: {text!r} is not a duration like '90s', '5m' or '1h'")
    return int(float(m.group(1)) * _UNIT_MS[m.group(2)])


def _line_of(source: str, index: int) -> int:
    """The line of the index-th ``[[rule]]`` header in the file (1-based; 0 unknown)."""
    seen = -1
    for number, text in enumerate(source.splitlines(), 1):
        if text.strip().startswith("[[rule]]"):
            seen += 1
            if seen == index:
                return number
    return 0


def _schedule(raw: Any, where: str) -> Schedule:
    if not isinstance(raw, dict):
        raise RulesError(f"{where}: schedule must be a table like {{days = 'mon-fri', ...}}")
    unknown = set(raw) - {"days", "hours", "tz"}
    if unknown:
        raise RulesError(f"{where}: schedule has unknown keys {sorted(unknown)}")
    days_text = str(raw.get("days", "mon-sun")).lower()
    days: set[int] = set()
    for part in days_text.split(","):
        part = part.strip()
        ends = part.split("-")
        if not all(e in _DAYS for e in ends) or len(ends) > 2:
            raise RulesError(f"{where}: schedule days {days_text!r}: use e.g. 'mon-fri,sun'")
        a, b = _DAYS.index(ends[0]), _DAYS.index(ends[-1])
        days.update(range(a, b + 1) if a <= b else [*range(a, 7), *range(0, b + 1)])
    hours = str(raw.get("hours", "00:00-24:00"))
    m = re.match(r"^(\d{2}):(\d{2})-(\d{2}):(\d{2})$", hours)
    if not m:
        raise RulesError(f"{where}: schedule hours {hours!r}: use 'HH:MM-HH:MM'")
    h1, m1, h2, m2 = (int(g) for g in m.groups())
    if h1 > 23 or m1 > 59 or h2 > 24 or m2 > 59 or (h2 == 24 and m2):
        raise RulesError(f"{where}: schedule hours {hours!r} are not times of day")
    end = time.max if h2 == 24 else time(h2, m2)
    try:
        tz = ZoneInfo(str(raw.get("tz", "Europe/Berlin")))
    except (ZoneInfoNotFoundError, ValueError):
        raise RulesError(f"{where}: unknown time zone {raw.get('tz')!r}") from None
    return Schedule(frozenset(days), time(h1, m1), end, tz)


def _number(raw: dict[str, Any], key: str, where: str, default: float | None = None) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RulesError(f"{where}: {key} must be a number, not {value!r}")
    return float(value)


def _rule(raw: Any, where: str, line: int) -> Rule | None:
    if not isinstance(raw, dict):
        raise RulesError(f"{where}: a rule must be a table")
    if isinstance(raw.get("name"), str):
        where = f"{where} ({raw['name']})"
    unknown = set(raw) - _KNOWN
    if unknown:
        raise RulesError(f"{where}: unknown keys {sorted(unknown)}")
    for key in ("name", "kind", "metric", "condition", "threshold", "severity", "summary"):
        if key not in raw:
            raise RulesError(f"{where}: {key} is required")
    name = raw["name"]
    if not isinstance(name, str) or not _NAME.match(name):
        raise RulesError(f"{where}: name {name!r} must match [a-z][a-z0-9_]*")
    if raw.get("enabled", True) is False:
        return None
    if raw["kind"] not in KINDS:
        raise RulesError(f"{where}: kind {raw['kind']!r} is not one of {', '.join(KINDS)}")
    for key in ("metric", "relative_to"):
        if key in raw and (not isinstance(raw[key], str) or not _METRIC.match(raw[key])):
            raise RulesError(f"{where}: {key} {raw[key]!r} is not a metric name")
    if raw["condition"] not in CONDITIONS:
        raise RulesError(f"{where}: condition {raw['condition']!r} is not one of {CONDITIONS}")
    if raw["severity"] not in SEVERITIES:
        raise RulesError(f"{where}: severity {raw['severity']!r} is not one of {SEVERITIES}")
    condition = raw["condition"]
    threshold = _number(raw, "threshold", where)
    clear = _number(raw, "clear", where, threshold)
    # The clear level must sit on the quiet side of the threshold, or the rule flaps.
    if condition in ("above", "rate_above", "outside", "band") and clear > threshold:
        raise RulesError(f"{where}: clear {clear} must not be above threshold {threshold}")
    if condition in ("below", "rate_below") and clear < threshold:
        raise RulesError(f"{where}: clear {clear} must not be below threshold {threshold}")
    if condition in ("outside", "band") and threshold <= 0:
        raise RulesError(f"{where}: threshold must be positive for {condition}")
    summary = raw["summary"]
    if not isinstance(summary, str) or not summary:
        raise RulesError(f"{where}: summary must be a non-empty string")
    try:
        summary.format(**SUMMARY_FIELDS)
    except (KeyError, ValueError, IndexError) as exc:
        known = ", ".join(sorted(SUMMARY_FIELDS))
        raise RulesError(f"{where}: summary {summary!r}: {exc!r} (fields: {known})") from None
    for_ms = parse_duration(raw.get("for", 0), f"{where}: for")
    alpha = _number(raw, "alpha", where, 0.05)
    if not 0 < alpha < 1:
        raise RulesError(f"{where}: alpha {alpha} must be between 0 and 1")
    min_samples = raw.get("min_samples", 30)
    if not isinstance(min_samples, int) or min_samples < 2:
        raise RulesError(f"{where}: min_samples must be an integer >= 2")
    mean_over = raw.get("mean_over")
    occupancy = None
    if "occupancy" in raw:
        occ = raw["occupancy"]
        if not isinstance(occ, dict) or set(occ) != {"metric", "min"}:
            raise RulesError(f"{where}: occupancy must be {{metric = '<name>', min = <number>}}")
        if not isinstance(occ["metric"], str) or not _METRIC.match(occ["metric"]):
            raise RulesError(f"{where}: occupancy metric {occ['metric']!r} is not a metric name")
        occupancy = (occ["metric"], _number(occ, "min", f"{where}: occupancy"))
    return Rule(
        name=name,
        kind=raw["kind"],
        metric=raw["metric"],
        condition=condition,
        threshold=threshold,
        clear=clear,
        for_ms=for_ms,
        clear_for_ms=parse_duration(raw.get("clear_for", 0), f"{where}: clear_for"),
        severity=raw["severity"],
        summary=summary,
        for_text=str(raw.get("for", "0s")),
        group=str(raw.get("escalates", name)),
        relative_to=raw.get("relative_to"),
        mean_over_ms=None
        if mean_over is None
        else parse_duration(mean_over, f"{where}: mean_over"),
        alpha=alpha,
        min_samples=min_samples,
        schedule=None if "schedule" not in raw else _schedule(raw["schedule"], where),
        occupancy=occupancy,
        line=line,
    )


def parse_rules(source: str, origin: str = "<rules>") -> RuleSet:
    """Parse and check a rules file's text; :class:`RulesError` names what is wrong."""
    try:
        doc = tomllib.loads(source)
    except tomllib.TOMLDecodeError as exc:
        raise RulesError(f"{origin}: {exc}") from None  # tomllib says "(at line N, ...)"
    unknown = set(doc) - {"rule", "offline"}
    if unknown:
        raise RulesError(f"{origin}: unknown top-level keys {sorted(unknown)}")
    raw_rules = doc.get("rule", [])
    if not isinstance(raw_rules, list):
        raise RulesError(f"{origin}: 'rule' must be an array of tables ([[rule]])")
    rules: list[Rule] = []
    for i, raw in enumerate(raw_rules):
        line = _line_of(source, i)
        rule = _rule(raw, f"{origin}:{line}" if line else f"{origin}: rule {i + 1}", line)
        if rule is not None:
            rules.append(rule)
    names: dict[str, Rule] = {}
    for rule in rules:
        if rule.name in names:
            raise RulesError(f"{origin}:{rule.line}: rule {rule.name!r} is defined twice")
        names[rule.name] = rule
    for rule in rules:
        if rule.group != rule.name:
            target = names.get(rule.group)
            if target is None or target.group != target.name:
                raise RulesError(
                    f"{origin}:{rule.line}: {rule.name} escalates {rule.group!r}, "
                    "which is not a rule that opens its own episodes"
                )
            if target.kind != rule.kind:
                raise RulesError(
                    f"{origin}:{rule.line}: {rule.name} escalates {rule.group}, "
                    "a rule of another kind"
                )
    offline = doc.get("offline", {})
    if not isinstance(offline, dict) or set(offline) - {"k", "severity", "enabled"}:
        raise RulesError(f"{origin}: [offline] takes k, severity and enabled")
    k = _number(offline, "k", f"{origin}: [offline]", 3.0)
    if k < 1:
        raise RulesError(f"{origin}: [offline] k must be at least 1")
    severity = offline.get("severity", "warning")
    if severity not in SEVERITIES:
        raise RulesError(f"{origin}: [offline] severity {severity!r} is not one of {SEVERITIES}")
    by_kind: dict[str, list[Rule]] = {}
    for rule in rules:
        by_kind.setdefault(rule.kind, []).append(rule)
    return RuleSet(
        rules=tuple(rules),
        by_kind={kind: tuple(rs) for kind, rs in by_kind.items()},
        offline_k=k,
        offline_severity=severity,
        offline_enabled=bool(offline.get("enabled", True)),
    )


def load_rules(path: Path | None = None) -> RuleSet:
    """The rules of ``path``, or the shipped defaults."""
    path = path if path is not None else DEFAULT_RULES
    try:
        source = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RulesError(f"{path}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise RulesError(f"{path}: not UTF-8 text") from None
    return parse_rules(source, str(path))
