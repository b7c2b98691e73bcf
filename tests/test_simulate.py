"""The simulated city, without a network: determinism, realistic values, scenarios, and
the alerts the shipped rules raise from it (through the pure ingest and rules stages)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson

from streams.stages.alerts import AlertState, evaluate
from streams.stages.enrich import Registry
from streams.stages.rules import load_rules
from streams.stages.validate import Limits, parse_message
from streams.tools.fleet import generate_fleet
from streams.tools.publish import device_messages
from streams.tools.simulate import City, parse_injection

START = 1_795_759_200_000  # 2026-11-27 06:00 UTC, 07:00 in Duisburg (a Friday)
MINUTE = 60_000
FLEET = generate_fleet(seed=2, scale=0.05)
LIMITS = Limits(max_bytes=65_536, max_future_ms=300_000, max_past_ms=86_400_000)


def city(*scenarios: str, batch: int = 0) -> City:
    injections = [parse_injection(s, START) for s in scenarios]
    return City(FLEET, seed=5, start_ms=START, injections=injections, batch=batch)


def readings(c: City, minutes: int) -> list[dict[str, Any]]:
    out = []
    for _, value in c.until(START + minutes * MINUTE):
        doc = orjson.loads(value)
        out += doc.get("readings", [doc])
    return out


def test_same_seed_same_stream_and_every_device_reports() -> None:
    a, b = city().until(START + 10 * MINUTE), city().until(START + 10 * MINUTE)
    assert a == b and len(a) > len(FLEET)
    assert {orjson.loads(v)["device_id"] for _, v in a} == {d["device_id"] for d in FLEET}


def test_readings_are_valid_and_gateway_batches_carry_them() -> None:
    c = city(batch=50)
    messages = c.until(START + 5 * MINUTE)
    total = 0
    for _, value in messages:
        good, bad, batch = parse_message(value, START + 5 * MINUTE, LIMITS)
        assert bad == [] and batch
        total += len(good)
    assert total == c.counts.readings and len(messages) < total


def test_classroom_co2_follows_the_school_day() -> None:
    # 07:00-09:00 in Duisburg: empty rooms at 420-500 ppm, lessons from 08:00 push it up.
    rs = [r for r in readings(city(), 120) if "co2_ppm" in r["metrics"]]
    before = [r["metrics"]["co2_ppm"] for r in rs if r["ts"] < START + 55 * MINUTE]
    during = [r["metrics"]["co2_ppm"] for r in rs if r["ts"] >= START + 100 * MINUTE]
    assert max(before) < 600 and 650 < sum(during) / len(during) < 1200


def alerts_of(c: City, minutes: int) -> Counter[tuple[str, str]]:
    registry = Registry()
    for key, value in device_messages(FLEET):
        registry.apply(key, value)
    ruleset, states, events = load_rules(), {}, []
    for _, value in c.until(START + minutes * MINUTE):
        good, _, _ = parse_message(value, START + minutes * MINUTE, LIMITS)
        for r in good:
            device = registry.devices[r.device_id]
            state = states.setdefault(r.device_id, AlertState())
            evaluate(state, ruleset.for_kind(device.kind), device, r.ts, r.metrics, events)
    return Counter((e["rule"], e["status"]) for e in events)


def test_scenarios_raise_the_alerts_they_describe() -> None:
    c = city("unventilated_classroom@0", "reefer_unplugged@0", "bearing_failure@0", "smog@0")
    got = alerts_of(c, 90)
    for rule in (
        "classroom_co2_high",
        "classroom_co2_critical",
        "reefer_temperature_excursion",
        "machine_vibration_anomaly",
        "machine_vibration_high",
        "air_no2_hourly_limit",
    ):
        assert got[(rule, "firing")] >= 1, (rule, got)


def test_a_quiet_morning_raises_nothing_critical() -> None:
    got = alerts_of(city(), 60)  # 07:00-08:00, no scenario
    assert not [k for k in got if "critical" in k[0] or "high" in k[0]], got


def test_uplink_failure_silences_an_access_point_and_everything_behind_it() -> None:
    c = city("uplink_failure@10")
    silent = set(c.targets("uplink_failure"))
    assert len(silent) > 1
    late = [r["device_id"] for r in readings(c, 40) if r["ts"] >= START + 11 * MINUTE]
    assert silent.isdisjoint(late) and late


def test_bad_data_is_the_kinds_of_bad_input_it_promises() -> None:
    c = city("bad_data@0")
    reasons: Counter[str] = Counter()
    for _, value in c.until(START + 5 * MINUTE):
        _, bad, _ = parse_message(value, START + 5 * MINUTE, LIMITS)
        reasons.update(r.reason for r in bad)
    assert {"invalid_json", "too_large", "schema", "ts_future"} <= set(reasons)
    assert c.counts.bad["duplicate"] > 0 and c.counts.bad["late"] > 0


def test_every_simulated_metric_is_in_its_kinds_vocabulary() -> None:
    from streams.devices import KIND_METRICS

    kinds = {d["device_id"]: d["kind"] for d in FLEET}
    for r in readings(city(), 10):
        assert set(r["metrics"]) <= set(KIND_METRICS[kinds[r["device_id"]]]), r
