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

**A silent district is one incident.** Notes travel to the partition of their root's
*district*, so one owner sees every family of a district (:class:`Round`). When the
input of a district goes quiet as a whole (a stopped gateway network, bridge or
simulator, an upstream outage), its devices fall silent together. A device past its
limit whose (district, kind) has gone quiet together, at least half of its judged
devices past ``min(2, k)`` intervals (the district's devices of every kind together,
when the kind has fewer than ``MASS_MIN_DEVICES`` there), raises no alert of its own:
once ``MASS_MIN_SILENT`` such devices are past their limits the district gets one
``district_silent`` alert (key ``district:<name>``) that counts them, by kind, and
names some; devices that fall silent later join it (another ``firing`` event of the
same episode when the count has grown by half). It resolves once at least as many of
its devices have reported again as are still silent; those still silent are then
judged on their own. A device silent alone still raises its own ``device_offline``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from streams.stages.alerts import alert_id, alert_record
from streams.stages.enrich import Device, Registry

OFFLINE_RULE = "device_offline"
SCOPE_RULE = "district_silent"
MAX_DEPTH = 8  # parent chains are short; a cycle in bad registry data must not hang us
MASS_MIN_DEVICES = 10  # judged devices a (district, kind) needs to go quiet as a whole
MASS_FRACTION = 0.5  # ... and the share of them past min(2, k) intervals
MASS_MIN_SILENT = 5  # devices past their limits before a district's alert opens
SAMPLE = 20  # device ids a district alert names


@dataclass(slots=True)
class Seen:
    arrival: int  # wall-clock ms of the latest reading
    ts: int  # its event time
    cadence: float = 0.0  # mean event-time gap between readings, ms
    gaps: int = 0
    offline_since: int = -1  # when the current episode (or covered silence) started
    alert_id: str = ""  # of the open episode; "" when covered or online
    cover: str = ""  # the alert_id of the district episode that covers it, while open
    returned: int = -1  # wall time it last reported after being offline or covered


@dataclass(slots=True)
class Family:
    """The liveness of one root and its descendants (the unit of state)."""

    devices: dict[str, Seen] = field(default_factory=dict)

    def to_json(self) -> list[Any]:
        return [
            [
                d,
                s.arrival,
                s.ts,
                s.cadence,
                s.gaps,
                s.offline_since,
                s.alert_id,
                s.cover,
                s.returned,
            ]
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


def district_key(registry: Registry, root: str) -> str:
    """What a family's notes are keyed and partitioned by: its root's district (the
    root itself when the registry does not know it)."""
    device = registry.devices.get(root)
    return f"district:{device.district}" if device is not None else root


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


@dataclass(slots=True)
class ScopeEpisode:
    """A district's open ``district_silent`` episode on this owner."""

    alert_id: str
    starts_at: int
    announced: int = 0  # silent devices counted by its latest firing event


@dataclass(slots=True)
class Coverage:
    """Who a district episode covers now: still silent (by kind) and back again."""

    silent: dict[str, int] = field(default_factory=dict)
    back: int = 0
    sample: list[str] = field(default_factory=list)

    @property
    def silent_total(self) -> int:
        return sum(self.silent.values())


class Liveness:
    """Judges families; emits ``device_offline`` and ``district_silent`` alert events
    into a list. Keeps, per district, the roots of the families this worker owns
    (:meth:`track`) and the open district episodes (:meth:`restore`)."""

    def __init__(
        self,
        registry: Registry,
        k: float = 3.0,
        severity: str = "warning",
        scope_severity: str = "critical",
    ) -> None:
        self.registry = registry
        self.k = k
        self.severity = severity
        self.scope_severity = scope_severity
        self.members: dict[str, set[str]] = {}  # district -> roots of families here
        self.scopes: dict[str, ScopeEpisode] = {}  # district -> open episode

    def track(self, root: str) -> None:
        """A family this worker owns (again: idempotent)."""
        device = self.registry.devices.get(root)
        if device is not None:
            self.members.setdefault(device.district, set()).add(root)

    def restore(self, families: Mapping[str, Family]) -> None:
        """After an assignment: the families now owned, and the district episodes their
        devices say are open (their covers; the episode starts at its first cover)."""
        self.members.clear()
        self.scopes.clear()
        for root, family in families.items():
            self.track(root)
            for device_id, seen in family.devices.items():
                device = self.registry.devices.get(device_id)
                if not seen.cover or device is None:
                    continue
                episode = self.scopes.get(device.district)
                if episode is None:
                    episode = self.scopes[device.district] = ScopeEpisode(seen.cover, seen.arrival)
                if seen.offline_since >= 0:  # (those back again no longer know when)
                    episode.starts_at = min(episode.starts_at, seen.offline_since)
                    episode.announced += 1

    def interval_ms(self, device_id: str, seen: Seen) -> float | None:
        device = self.registry.devices.get(device_id)
        if device is not None and device.heartbeat_s:
            return device.heartbeat_s * 1000.0
        return seen.cadence if seen.gaps >= 3 else None

    def heard(
        self, family: Family, device_id: str, arrival: int, ts: int, out: list[dict[str, Any]]
    ) -> None:
        """A reading of ``device_id`` arrived: note it, and resolve its episode if open.
        (A district episode's cover stays: it counts the device as back.)"""
        seen = family.devices.get(device_id)
        if seen is not None and seen.offline_since >= 0:
            device = self.registry.devices.get(device_id)
            if seen.alert_id and device is not None:
                out.append(
                    self._record(
                        device, seen, "resolved", max(arrival, seen.offline_since), None, 0
                    )
                )
            seen.offline_since, seen.alert_id, seen.returned = -1, "", arrival
        note(family, device_id, arrival, ts)

    def tick(self, family: Family, now: int, owned_since: int, out: list[dict[str, Any]]) -> bool:
        """Judge every device of ``family`` at wall time ``now``, on its own (no
        district judgement: see :class:`Round`); returns whether its state changed."""
        return self._judge(family, now, owned_since, out, None, "")

    def round(self, now: int, owned_since: int, peek: Callable[[str], Family | None]) -> Round:
        """One tick over this worker's families, with district judgement."""
        return Round(self, now, owned_since, peek)

    def _judge(
        self,
        family: Family,
        now: int,
        owned_since: int,
        out: list[dict[str, Any]],
        mass: Round | None,
        root: str,
    ) -> bool:
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
            was_covered = seen.offline_since >= 0 and not seen.alert_id and not seen.cover
            for ancestor in self._ancestors(device):
                a = family.devices.get(ancestor)
                if a is None:
                    continue
                if a.offline_since >= 0 or silent.get(ancestor, False):
                    covered = True
                elif suspect.get(ancestor, False):
                    waiting = True
                elif was_covered and now - a.returned <= (self.interval_ms(device_id, seen) or 0):
                    # Its ancestor just came back: its own report may be a second behind
                    # (notes travel batched); it gets one interval before its verdict.
                    waiting = True
            if seen.cover:  # its district's episode is open: it counts there
                if seen.offline_since < 0:  # (it was back, and is silent again)
                    seen.offline_since = now
                    changed = True
                continue
            if covered:
                if seen.alert_id:  # it was alone offline, now an ancestor is: keep its episode
                    continue
                if seen.offline_since < 0:
                    seen.offline_since = now
                    changed = True
                continue
            if waiting or seen.alert_id:
                continue
            if mass is not None and mass.quiet(device):
                mass.candidate(root, family, device)  # the district's verdict, at finish
                continue
            seen.offline_since = now
            seen.alert_id = alert_id(device_id, OFFLINE_RULE, seen.arrival)  # stable on retry
            affected = self._affected(family, device_id, seen)
            out.append(self._record(device, seen, "firing", None, affected, owned_since))
            changed = True
        # Covered devices whose ancestors are back and that are silent still are judged
        # on their own at the next tick; those heard again were cleared by `heard`.
        for device_id, seen in family.devices.items():
            if (
                seen.offline_since >= 0
                and not seen.alert_id
                and not seen.cover
                and not silent[device_id]
            ):
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
        owned_since: int,
    ) -> dict[str, Any]:
        interval = self.interval_ms(device.device_id, seen) or 0.0
        limit_s = self.k * interval / 1000.0
        # As the rule counts it: from the last report, or from the takeover if later.
        silent_s = (seen.offline_since - max(seen.arrival, owned_since)) / 1000.0
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


class Round:
    """One tick of the offline timer over this worker's families: each due family is
    judged (:meth:`family`), devices whose district and kind went quiet together wait
    as candidates, and :meth:`finish` judges each district as a whole."""

    def __init__(
        self,
        liveness: Liveness,
        now: int,
        owned_since: int,
        peek: Callable[[str], Family | None],
    ) -> None:
        self.liveness = liveness
        self.now = now
        self.owned_since = owned_since
        self.peek = peek  # a family of this worker by its root
        self.candidates: dict[str, list[tuple[str, Family, str]]] = {}
        self.changed: set[str] = set()  # roots whose family changed
        self._quiet: dict[str, dict[str, bool]] = {}  # district -> kind (or "*") -> quiet

    def family(self, root: str, family: Family, out: list[dict[str, Any]]) -> bool:
        changed = self.liveness._judge(family, self.now, self.owned_since, out, self, root)
        if changed:
            self.changed.add(root)
        return changed

    def candidate(self, root: str, family: Family, device: Device) -> None:
        self.candidates.setdefault(device.district, []).append((root, family, device.device_id))

    def quiet(self, device: Device) -> bool:
        """Has ``device``'s kind in its district (or, where the kind is too rare there,
        the whole district) gone quiet together?"""
        quiet = self._quiet.get(device.district)
        if quiet is None:
            quiet = self._quiet[device.district] = self._judge_district(device.district)
        return quiet.get(device.kind, quiet.get("*", False))

    def _judge_district(self, district: str) -> dict[str, bool]:
        live = self.liveness
        stale_after = min(2.0, live.k)
        judged: dict[str, int] = {}
        stale: dict[str, int] = {}
        for root in live.members.get(district, ()):
            family = self.peek(root)
            if family is None:
                continue
            for device_id, seen in family.devices.items():
                device = live.registry.devices.get(device_id)
                interval = live.interval_ms(device_id, seen)
                if device is None or interval is None or device.district != district:
                    continue
                for group in (device.kind, "*"):
                    judged[group] = judged.get(group, 0) + 1
                    if self.now - max(seen.arrival, self.owned_since) > stale_after * interval:
                        stale[group] = stale.get(group, 0) + 1
        return {
            group: stale.get(group, 0) >= MASS_FRACTION * n
            for group, n in judged.items()
            if n >= MASS_MIN_DEVICES
        }

    def finish(self, out: list[dict[str, Any]]) -> set[str]:
        """Open, extend and resolve district episodes; returns the roots whose family
        changed in this round."""
        live = self.liveness
        for district in sorted(set(self.candidates) | set(live.scopes)):
            waiting = self.candidates.get(district, [])
            episode = live.scopes.get(district)
            if episode is None:
                if len(waiting) < MASS_MIN_SILENT:
                    continue  # not yet: they wait for the district's verdict
                first = min(family.devices[d].arrival for _, family, d in waiting)
                episode = ScopeEpisode(
                    alert_id(f"district:{district}", SCOPE_RULE, first), self.now
                )
                live.scopes[district] = episode
            for root, family, device_id in waiting:
                seen = family.devices[device_id]
                seen.offline_since, seen.cover = self.now, episode.alert_id
                self.changed.add(root)
            coverage = self._coverage(district, episode.alert_id)
            if coverage.back >= coverage.silent_total and not waiting:
                self._resolve(district, episode, coverage, out)
            elif coverage.silent_total >= 1.5 * episode.announced:
                episode.announced = coverage.silent_total
                out.append(self._record(district, episode, coverage, "firing", None))
        return self.changed

    def _coverage(self, district: str, cover: str) -> Coverage:
        """Devices the episode covers: its own, and those covered by an ancestor that
        it covers."""
        coverage = Coverage()
        registry = self.liveness.registry
        for root in self.liveness.members.get(district, ()):
            family = self.peek(root)
            if family is None or not any(s.cover == cover for s in family.devices.values()):
                continue
            for device_id, seen in family.devices.items():
                device = registry.devices.get(device_id)
                kind = device.kind if device is not None else "unknown"
                if seen.cover == cover and seen.offline_since < 0:
                    coverage.back += 1
                elif seen.cover == cover or (seen.offline_since >= 0 and not seen.alert_id):
                    coverage.silent[kind] = coverage.silent.get(kind, 0) + 1
                    if len(coverage.sample) < SAMPLE:
                        coverage.sample.append(device_id)
        coverage.sample.sort()
        return coverage

    def _resolve(
        self, district: str, episode: ScopeEpisode, coverage: Coverage, out: list[dict[str, Any]]
    ) -> None:
        """The district reports again: its devices still silent are judged on their own
        from the next tick."""
        for root in self.liveness.members.get(district, ()):
            family = self.peek(root)
            if family is None:
                continue
            for seen in family.devices.values():
                if seen.cover == episode.alert_id:
                    seen.cover = ""
                    seen.offline_since = -1
                    self.changed.add(root)
        del self.liveness.scopes[district]
        out.append(self._record(district, episode, coverage, "resolved", self.now))

    def _record(
        self,
        district: str,
        episode: ScopeEpisode,
        coverage: Coverage,
        status: str,
        ends_at: int | None,
    ) -> dict[str, Any]:
        silent = coverage.silent_total
        kinds = sorted(coverage.silent.items(), key=lambda kv: (-kv[1], kv[0]))
        by_kind = ", ".join(f"{kind} {n}" for kind, n in kinds)
        since = time.strftime("%H:%M:%S", time.gmtime(episode.starts_at / 1000))
        if status == "firing":
            text = f"{district}: {silent} devices silent together since {since} UTC ({by_kind})"
        else:
            text = f"{district} reports again ({coverage.back} devices back, {silent} still silent)"
        scope = Device(f"district:{district}", "*", district, "*", None, None, None, None)
        record = alert_record(
            alert_id=episode.alert_id,
            rule=SCOPE_RULE,
            status=status,
            severity=self.liveness.scope_severity,
            device=scope,
            metric=None,
            value=float(silent),
            threshold=float(MASS_MIN_SILENT),
            starts_at=episode.starts_at,
            ends_at=ends_at,
            summary=text,
            at=self.now,
        )
        record["scope"] = "district"
        record["affected_devices"] = silent
        record["affected_kinds"] = dict(kinds)
        record["affected_sample"] = coverage.sample
        return record
