"""A simulated Duisburg: telemetry for every device of a registry, with scenarios.

No Kafka here: :class:`City` turns a fleet (``citystreams registry generate``) into
Kafka messages for ``telemetry.raw`` up to a given event time; ``citystreams simulate``
and ``citystreams up`` send them. Same seed and start, same stream.

Each device reports on its own cadence (its ``heartbeat_s``, with a random phase),
with values from a small model of its kind in the city's local time (Europe/Berlin):

- classrooms: occupancy in school hours (Mon-Fri 08:00-15:30, breaks aired), CO2 that
  rises with the pupils and falls when windows are opened, temperature, humidity;
- WLAN access points: clients follow their school's lessons, throughput with them;
- 5G cells: radio load (PRB %) with the day and the rush hours, RSRP, SINR, UEs;
- air quality: NO2 and PM10 following the traffic's rush hours;
- traffic: vehicles per minute, mean speed, occupancy;
- reefers: temperature close to the set point, power draw;
- machines: vibration (mm/s RMS) around a machine-specific level, temperature, rpm.

Scenarios (:data:`SCENARIOS`) change one target's model from a time on.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from streams.tools.fleet import HEARTBEAT_S

CITY_TZ = ZoneInfo("Europe/Berlin")
MINUTE = 60_000


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    kind: str  # what it targets
    duration_ms: int
    text: str


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "unventilated_classroom",
            "classroom_air",
            90 * MINUTE,
            "A full classroom whose windows have stayed shut since the morning: CO2 climbs "
            "past 1000 ppm and then 2000 ppm (classroom_co2_high, escalating to "
            "classroom_co2_critical).",
        ),
        Scenario(
            "smog",
            "air_quality",
            3 * 60 * MINUTE,
            "A smog episode in one district: NO2 near 300 ug/m3 and PM10 near 120 ug/m3 at "
            "its stations (air_no2_hourly_limit once the hourly mean passes 200).",
        ),
        Scenario(
            "cell_outage",
            "cell_5g",
            60 * MINUTE,
            "A 5G cell stops reporting (device_offline after k x its heartbeat, wall clock).",
        ),
        Scenario(
            "uplink_failure",
            "wlan_ap",
            60 * MINUTE,
            "A school's uplink fails: one access point and every classroom sensor behind it "
            "go silent together (one device_offline for the access point, with "
            "affected_children; none for the sensors).",
        ),
        Scenario(
            "reefer_unplugged",
            "reefer",
            120 * MINUTE,
            "A reefer container loses power: its temperature drifts towards the outside "
            "air, 0.5 C a minute (reefer_temperature_excursion after 10 minutes beyond 2 C).",
        ),
        Scenario(
            "bearing_failure",
            "machine",
            60 * MINUTE,
            "A machine's bearing wears out: vibration leaves its learned band and rises "
            "past 7.1 mm/s (machine_vibration_anomaly, escalating to machine_vibration_high).",
        ),
        Scenario(
            "bad_data",
            "*",
            10 * MINUTE,
            "Devices and gateways misbehave: malformed JSON, oversize messages, duplicates, "
            "late and out-of-order readings, clock-skewed devices (dead letters with "
            "reasons invalid_json, too_large, schema, late, ts_future; duplicates counted).",
        ),
    )
}


@dataclass(frozen=True, slots=True)
class Injection:
    scenario: str
    at_ms: int  # event time it starts
    target: str | None = None  # a device id (or None: chosen by the seed)


def parse_injection(text: str, start_ms: int) -> Injection:
    """``name`` or ``name@MINUTES`` (event-time minutes after the start) or
    ``name@MINUTES:DEVICE_ID``."""
    name, _, rest = text.partition("@")
    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r}; `citystreams simulate --list-scenarios`")
    minutes, _, target = rest.partition(":")
    try:
        offset = float(minutes) if minutes else 1.0
    except ValueError:
        raise ValueError(f"{text!r}: expected NAME@MINUTES[:DEVICE_ID]") from None
    return Injection(name, start_ms + int(offset * MINUTE), target or None)


@dataclass(slots=True)
class _Device:
    record: dict[str, Any]
    rng: random.Random
    interval_ms: int
    next_ts: int
    seq: int = 0
    level: float = 0.0  # the model's slow state (CO2, temperature, ...)
    base: float = 0.0  # a device-specific constant (set point, vibration level, ...)
    effect: str | None = None  # the scenario acting on it
    effect_from: int = 0
    effect_until: int = 0


@dataclass(slots=True)
class Counts:
    readings: int = 0
    messages: int = 0
    bad: dict[str, int] = field(default_factory=dict)


def _local(ts: int) -> tuple[int, float]:
    """(weekday 0 = Monday, hour as a float) in Duisburg."""
    t = datetime.fromtimestamp(ts / 1000, CITY_TZ)
    return t.weekday(), t.hour + t.minute / 60 + t.second / 3600


def _lesson(weekday: int, hour: float) -> bool:
    """Pupils in the room: Mon-Fri 08:00-15:30, out in the breaks at 09:30 and 11:15."""
    if weekday > 4 or not 8.0 <= hour < 15.5:
        return False
    return not (9.5 <= hour < 9.75 or 11.25 <= hour < 11.5 or 13.0 <= hour < 13.5)


def _rush(hour: float) -> float:
    """0..1, peaking at 07:45 and 17:00."""
    return max(math.exp(-(((hour - 7.75) / 1.0) ** 2)), math.exp(-(((hour - 17.0) / 1.2) ** 2)))


def _daylight(hour: float) -> float:
    return max(0.0, math.sin(math.pi * (hour - 6) / 16)) if 6 <= hour <= 22 else 0.0


class City:
    """Telemetry of a fleet, generated in event-time order, with scenarios."""

    def __init__(
        self,
        fleet: list[dict[str, Any]],
        *,
        seed: int,
        start_ms: int,
        injections: Iterable[Injection] = (),
        batch: int = 0,
    ) -> None:
        self.seed = seed
        self.start_ms = start_ms
        self.batch = batch
        self.now = start_ms
        self.counts = Counts()
        rng = random.Random(seed)
        self.devices: list[_Device] = []
        self.by_id: dict[str, _Device] = {}
        for index, record in enumerate(fleet):
            kind = str(record["kind"])
            interval = int(float(record.get("heartbeat_s") or HEARTBEAT_S.get(kind, 60)) * 1000)
            drng = random.Random(f"{seed}:{index}:{record['device_id']}")
            device = _Device(record, drng, interval, start_ms + drng.randrange(interval))
            device.base = self._base(kind, drng)
            device.level = self._initial(kind, device.base)
            self.devices.append(device)
            self.by_id[str(record["device_id"])] = device
        self.children: dict[str, list[str]] = {}
        for record in fleet:
            if record.get("parent"):
                self.children.setdefault(str(record["parent"]), []).append(str(record["device_id"]))
        self.bad_from = self.bad_until = self.bad_minute = 0
        for injection in injections:
            self._inject(injection, rng)

    # --- scenarios ----------------------------------------------------------------------
    def _inject(self, injection: Injection, rng: random.Random) -> None:
        scenario = SCENARIOS[injection.scenario]
        until = injection.at_ms + scenario.duration_ms
        if scenario.name == "bad_data":
            self.bad_from, self.bad_until = injection.at_ms, until
            return
        candidates = [d for d in self.devices if d.record["kind"] == scenario.kind]
        if injection.target is not None:
            candidates = [d for d in candidates if d.record["device_id"] == injection.target]
            if not candidates:
                raise ValueError(f"{scenario.name}: no {scenario.kind} device {injection.target!r}")
        if scenario.name == "uplink_failure":  # an access point that has devices behind it
            candidates = [d for d in candidates if self.children.get(d.record["device_id"])]
        if not candidates:
            raise ValueError(f"{scenario.name}: the fleet has no {scenario.kind} device for it")
        target = candidates[0] if injection.target else rng.choice(candidates)
        targets = [target]
        if scenario.name == "smog":  # every station of the target's district
            targets = [d for d in candidates if d.record["district"] == target.record["district"]]
        if scenario.name == "uplink_failure":
            targets += [self.by_id[c] for c in self.children[target.record["device_id"]]]
        for device in targets:
            device.effect = scenario.name
            device.effect_from, device.effect_until = injection.at_ms, until

    def targets(self, scenario: str) -> list[str]:
        """The devices a scenario acts on (for tests and the live view)."""
        return [str(d.record["device_id"]) for d in self.devices if d.effect == scenario]

    def _active(self, device: _Device, ts: int) -> str | None:
        if device.effect is not None and device.effect_from <= ts < device.effect_until:
            return device.effect
        return None

    # --- models ---------------------------------------------------------------------------
    @staticmethod
    def _base(kind: str, rng: random.Random) -> float:
        if kind == "reefer":
            return rng.choice((-18.0, -18.0, 2.0, 5.0, 13.0))  # set point
        if kind == "machine":
            return rng.uniform(1.5, 3.5)  # normal vibration, mm/s RMS
        if kind == "cell_5g":
            return rng.uniform(0.6, 1.2)  # how busy this cell is
        return rng.uniform(0.8, 1.2)

    @staticmethod
    def _initial(kind: str, base: float) -> float:
        return {"classroom_air": 450.0, "reefer": base}.get(kind, 0.0)

    def _metrics(self, d: _Device, ts: int) -> dict[str, float] | None:
        """One reading's metrics, or None when the device is silent."""
        kind, rng, effect = d.record["kind"], d.rng, self._active(d, ts)
        if effect in ("cell_outage", "uplink_failure"):
            return None
        weekday, hour = _local(ts)
        minutes = d.interval_ms / MINUTE
        if kind == "classroom_air":
            # ~18 l CO2 an hour per pupil in a 200 m3 room: 1.5 ppm a minute each. Air
            # exchange per minute: windows tilted in lessons (0.06), open in the breaks
            # and after school; shut in the scenario (and a full room).
            lesson = _lesson(weekday, hour)
            stuffy = effect == "unventilated_classroom"
            if stuffy and d.level < 850:
                d.level = 850.0  # shut since the morning: already stale when it starts
            pupils = 30.0 if stuffy else (24 * d.base if lesson else 0.0)
            airing = 0.002 if stuffy else (0.06 if lesson else 0.15)
            d.level += minutes * (pupils * 1.5 - airing * (d.level - 420.0))
            d.level = max(400.0, d.level)
            return {
                "co2_ppm": round(d.level + rng.gauss(0, 8), 1),
                "temperature_c": round(20.5 + 0.05 * pupils + rng.gauss(0, 0.15), 2),
                "humidity_pct": round(38 + 0.3 * pupils + rng.gauss(0, 1.0), 1),
            }
        if kind == "wlan_ap":
            lesson = _lesson(weekday, hour)
            clients = max(
                0, round((28 * d.base if lesson else 1) + rng.gauss(0, 3 if lesson else 1))
            )
            return {
                "clients": clients,
                "throughput_mbps": round(clients * rng.uniform(0.8, 2.5), 1),
            }
        if kind == "cell_5g":
            load = (20 + 35 * _daylight(hour) + 30 * _rush(hour)) * d.base + rng.gauss(0, 4)
            load = min(100.0, max(1.0, load))
            return {
                "prb_util_pct": round(load, 1),
                "rsrp_dbm": round(-88 + rng.gauss(0, 4), 1),
                "sinr_db": round(16 - 0.08 * load + rng.gauss(0, 2), 1),
                "connected_ues": max(0, round(load * 6 + rng.gauss(0, 20))),
            }
        if kind == "air_quality":
            traffic = _rush(hour)
            no2 = 22 + 45 * traffic + rng.gauss(0, 4)
            pm10 = 16 + 14 * traffic + rng.gauss(0, 3)
            if effect == "smog":
                no2, pm10 = 290 + rng.gauss(0, 15), 120 + rng.gauss(0, 10)
            return {"no2_ugm3": round(max(1.0, no2), 1), "pm10_ugm3": round(max(1.0, pm10), 1)}
        if kind == "traffic":
            flow = (8 + 30 * _rush(hour) + 10 * _daylight(hour)) * d.base
            speed = max(5.0, 48 - 0.9 * flow + rng.gauss(0, 3))
            return {
                "vehicles_per_min": max(0, round(flow + rng.gauss(0, 2))),
                "speed_kmh": round(speed, 1),
                "occupancy_pct": round(min(100.0, flow * 1.6 + rng.gauss(0, 2)), 1),
            }
        if kind == "reefer":
            if effect == "reefer_unplugged":
                d.level = min(18.0, d.level + 0.5 * minutes)
                power = 0.0
            else:
                d.level += (d.base - d.level) * min(1.0, 0.3 * minutes) + rng.gauss(0, 0.15)
                power = rng.uniform(3.0, 5.5)
            return {
                "temperature_c": round(d.level, 2),
                "setpoint_c": d.base,
                "power_kw": round(power, 2),
            }
        if kind == "machine":
            vibration = d.base + rng.gauss(0, 0.08 * d.base)
            if effect == "bearing_failure":
                worn = (ts - d.effect_from) / (20 * MINUTE)  # past 7.1 mm/s within ~20 min
                vibration = d.base + 6.5 * min(1.5, worn) + rng.gauss(0, 0.2)
            return {
                "vibration_mm_s": round(max(0.1, vibration), 3),
                "temperature_c": round(45 + 4 * (vibration - d.base) + rng.gauss(0, 0.5), 2),
                "spindle_rpm": round(1480 + rng.gauss(0, 5)),
            }
        return {"value": round(rng.random(), 3)}

    # --- messages ------------------------------------------------------------------------
    def until(self, event_ms: int) -> list[tuple[bytes | None, bytes]]:
        """Every message with an event time before ``event_ms`` not yet produced, in
        event-time order (per gateway batch when batching)."""
        due: list[tuple[int, _Device, dict[str, Any]]] = []
        for d in self.devices:
            while d.next_ts < event_ms:
                ts = d.next_ts
                d.next_ts += d.interval_ms
                metrics = self._metrics(d, ts)
                if metrics is None:
                    continue
                d.seq += 1
                reading = {
                    "device_id": d.record["device_id"],
                    "ts": ts,
                    "seq": d.seq,
                    "metrics": metrics,
                }
                due.append((ts, d, reading))
        due.sort(key=lambda x: x[0])
        self.now = max(self.now, event_ms)
        self.counts.readings += len(due)
        messages: list[tuple[bytes | None, bytes]] = []
        if self.batch > 1:
            gateways: dict[str, list[dict[str, Any]]] = {}
            for _, d, reading in due:
                gw = f"gw-{d.record['district']}-{d.record['site']}".lower()
                batch = gateways.setdefault(gw, [])
                batch.append(reading)
                if len(batch) >= self.batch:
                    messages.append((gw.encode(), orjson.dumps({"readings": batch})))
                    gateways[gw] = []
            messages += [
                (gw.encode(), orjson.dumps({"readings": b})) for gw, b in gateways.items() if b
            ]
        else:
            messages = [(r["device_id"].encode(), orjson.dumps(r)) for _, _, r in due]
        # Bad data: one of each kind per event-time minute while the scenario runs.
        if due and self.bad_until and self.bad_from <= due[-1][0] < self.bad_until:
            minute = due[-1][0] // MINUTE
            if minute != self.bad_minute:
                self.bad_minute = minute
                messages += self._bad(due)
        self.counts.messages += len(messages)
        return messages

    def _bad(
        self, due: list[tuple[int, _Device, dict[str, Any]]]
    ) -> list[tuple[bytes | None, bytes]]:
        """A handful of each kind of bad input per call while the scenario runs."""
        rng = random.Random(f"{self.seed}:bad:{due[-1][0]}")
        out: list[tuple[bytes | None, bytes]] = []

        def note(reason: str) -> None:
            self.counts.bad[reason] = self.counts.bad.get(reason, 0) + 1

        for _ in range(1):
            ts, _, reading = rng.choice(due)
            key = reading["device_id"].encode()
            out.append((key, orjson.dumps(reading)[:-7]))  # cut off: invalid JSON
            note("invalid_json")
            out.append((key, b'{"device_id": "' + key + b'", "pad": "' + b"x" * 70_000 + b'"}'))
            note("too_large")
            out.append((key, orjson.dumps({"device_id": reading["device_id"], "ts": ts})))
            note("schema")  # no metrics
            out.append((key, orjson.dumps(reading)))  # the same seq again: a duplicate
            note("duplicate")
            late = dict(reading, ts=ts - 30 * MINUTE, seq=None)
            del late["seq"]
            out.append((key, orjson.dumps(late)))  # its window has long closed
            note("late")
            skewed = dict(reading, ts=ts + 48 * 3_600_000)
            del skewed["seq"]
            out.append((key, orjson.dumps(skewed)))  # a clock two days ahead
            note("ts_future")
        return out


def describe_scenarios() -> str:
    lines = []
    for s in SCENARIOS.values():
        lines.append(
            f"{s.name} ({s.kind if s.kind != '*' else 'any'}, {s.duration_ms // MINUTE} min)"
        )
        lines.append(f"    {s.text}")
    return "\n".join(lines)
