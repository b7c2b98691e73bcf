"""Offline detection and correlation with explicit wall times. k = 3; an access point
and its sensors report every 60 s (heartbeat_s), so each has a 180 s limit."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from streams.stages.enrich import Registry
from streams.stages.liveness import Family, Liveness, decode_family, encode_family, root_of

T = 1_795_780_800_000


def at(seconds: float) -> int:
    return T + int(seconds * 1000)


def registry(sensors: int = 20, heartbeat: float | None = 60) -> Registry:
    reg = Registry()
    ap = {
        "device_id": "ap",
        "kind": "wlan_ap",
        "district": "Mitte",
        "site": "gs017",
        "lat": 51.4,
        "lon": 6.7,
    }
    reg.apply(b"ap", orjson.dumps(ap | {"heartbeat_s": 60}))
    assert len(reg) == 1
    for i in range(sensors):
        doc = ap | {"device_id": f"s{i}", "kind": "classroom_air", "parent": "ap"}
        if heartbeat is not None:
            doc["heartbeat_s"] = heartbeat
        assert reg.apply(f"s{i}".encode(), orjson.dumps(doc)) is None
    return reg


def hear(live: Liveness, family: Family, second: float, *devices: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for d in devices:
        live.heard(family, d, at(second), at(second), out)
    return out


def tick(
    live: Liveness, family: Family, second: float, owned: float = -1000
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    live.tick(family, at(second), at(owned), out)
    return out


def test_an_access_point_silent_with_its_sensors_is_one_alert() -> None:
    reg = registry()
    live, family = Liveness(reg), Family()
    sensors = [f"s{i}" for i in range(20)]
    hear(live, family, 0, "ap", *sensors)
    hear(live, family, 1, *sensors)  # the sensors' last words, just after the AP's
    assert tick(live, family, 180) == []  # not yet past 3 x 60 s
    fired = tick(live, family, 181)  # the AP's limit passed: one alert, 20 affected
    assert [(e["device_id"], e["status"], e["affected_children"]) for e in fired] == [
        ("ap", "firing", 20)
    ]
    assert tick(live, family, 190) == []  # sensors past their limits: covered, silent
    resolved = hear(live, family, 300, "ap")
    assert [(e["device_id"], e["status"]) for e in resolved] == [("ap", "resolved")]
    assert resolved[0]["alert_id"] == fired[0]["alert_id"]
    # The AP is back; its sensors get one interval to report too (their notes may
    # arrive a second later), then those still silent are offline on their own.
    assert tick(live, family, 301) == []
    hear(live, family, 302, *sensors[:5])
    hear(live, family, 355, "ap")
    assert tick(live, family, 360) == []
    assert len(tick(live, family, 361)) == 15


def test_a_sensor_silent_alone_fires_on_its_own() -> None:
    reg = registry(sensors=2)
    live, family = Liveness(reg), Family()
    hear(live, family, 0, "ap", "s0", "s1")
    for second in range(60, 241, 60):
        hear(live, family, second, "ap", "s1")  # s0 stopped at 0
    fired = tick(live, family, 181)
    assert [(e["device_id"], e["rule"], e["status"]) for e in fired] == [
        ("s0", "device_offline", "firing")
    ]
    assert "affected_children" not in fired[0] or fired[0]["affected_children"] == 0
    assert tick(live, family, 200) == []  # one episode, fired once
    assert [e["status"] for e in hear(live, family, 250, "s0")] == ["resolved"]


def test_a_sensor_waits_for_its_suspect_parents_verdict() -> None:
    reg = registry(sensors=1)
    live, family = Liveness(reg), Family()
    hear(live, family, 0, "s0")
    hear(live, family, 30, "ap")  # the AP went quiet 30 s after the sensor
    assert tick(live, family, 185) == []  # s0 past its limit, the AP only suspect: wait
    fired = tick(live, family, 211)  # the AP's verdict: offline; the sensor is covered
    assert [(e["device_id"], e["affected_children"]) for e in fired] == [("ap", 1)]


def test_cadence_is_learned_without_a_heartbeat() -> None:
    reg = registry(sensors=1, heartbeat=None)
    live, family = Liveness(reg), Family()
    for second in (0, 10, 20, 30):  # three gaps of 10 s: limit 30 s
        hear(live, family, second, "ap", "s0")
    hear(live, family, 60, "ap")
    assert tick(live, family, 60) == []
    assert [e["device_id"] for e in tick(live, family, 61)] == ["s0"]


def test_a_new_owner_counts_silence_from_its_takeover() -> None:
    reg = registry(sensors=0)
    live, family = Liveness(reg), Family()
    hear(live, family, 0, "ap")
    state = decode_family(encode_family(family))  # what a worker taking over loads
    assert tick(live, state, 500, owned=400) == []  # silent 500 s, but owned for 100 s
    assert len(tick(live, state, 581, owned=400)) == 1


def test_the_root_is_the_top_of_the_parent_chain() -> None:
    reg = registry(sensors=1)
    assert root_of(reg, "s0") == "ap" and root_of(reg, "ap") == "ap"
    assert root_of(reg, "not-registered") == "not-registered"


@pytest.mark.parametrize("seed", range(20))
def test_no_tick_before_next_check_finds_anything(seed: int) -> None:
    # Random hearing and ticking; before next_check a tick must be a no-op, and at
    # next_check (when it is not "every tick") something must be due: suspect or worse.
    rng = random.Random(seed)
    reg = registry(sensors=5, heartbeat=rng.choice([None, 30, 60]))
    live, family = Liveness(reg, k=rng.choice([0.5, 3.0])), Family()
    devices = ["ap"] + [f"s{i}" for i in range(5)]
    now, owned = 0.0, rng.uniform(-100, 100)
    for _ in range(60):
        now += rng.uniform(0, 90)
        if rng.random() < 0.5:
            hear(live, family, now, *rng.sample(devices, rng.randint(1, 6)))
        due = live.next_check(family, at(owned))
        if due == 0:
            tick(live, family, now, owned)
            continue
        before = encode_family(family)
        probe = min(due - 1, at(now + rng.uniform(0, 600)))
        out: list[dict[str, Any]] = []
        assert not live.tick(family, probe, at(owned), out) and out == []
        assert encode_family(family) == before
        suspects = [
            d
            for d, seen in family.devices.items()
            if (i := live.interval_ms(d, seen)) is not None
            and due - max(seen.arrival, at(owned)) > min(1.0, live.k) * i
        ]
        assert due >= 2**62 or suspects
        tick(live, family, now, owned)


# --- a silent district is one incident --------------------------------------------------
def city(
    per_district: int = 170, districts: tuple[str, ...] = ("Mitte", "Hamborn", "Süd")
) -> Registry:
    """Stations without parents, reporting every 60 s, in a few districts."""
    reg = Registry()
    for district in districts:
        for i in range(per_district):
            device_id = f"d{districts.index(district)}-aq{i}"
            doc = {"device_id": device_id, "kind": "air_quality", "district": district}
            doc |= {"site": f"s{i}", "lat": 51.4, "lon": 6.7, "heartbeat_s": 60}
            assert reg.apply(device_id.encode(), orjson.dumps(doc)) is None
    return reg


def tick_city(live: Liveness, families: dict[str, Family], second: float) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    judge = live.round(at(second), at(-1000), families.get)
    for root, family in families.items():
        judge.family(root, family, out)
    judge.finish(out)
    return out


def hear_city(
    live: Liveness, families: dict[str, Family], second: float, devices: list[str] | None = None
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for root in devices if devices is not None else list(families):
        live.heard(families[root], root, at(second), at(second), out)
    return out


def test_a_silent_city_is_one_alert_per_district_and_resolves_when_it_returns() -> None:
    reg = city()
    live = Liveness(reg)
    families = {d: Family() for d in reg.devices}  # no parents: a family each
    for root in families:
        live.track(root)
    for second in (0, 60, 120):
        hear_city(live, families, second + hash(second) % 7)
    assert tick_city(live, families, 300) == []  # silent 180 s: everyone waits for...
    fired = tick_city(live, families, 310)  # ...the district's verdict: one alert each
    assert sorted((e["device_id"], e["rule"], e["affected_devices"]) for e in fired) == [
        ("district:Hamborn", "district_silent", 170),
        ("district:Mitte", "district_silent", 170),
        ("district:Süd", "district_silent", 170),
    ]
    assert all(len(e["affected_sample"]) == 20 for e in fired)
    assert tick_city(live, families, 400) == []  # no device alerts on its own meanwhile
    hear_city(live, families, 500)
    resolved = tick_city(live, families, 501)
    assert sorted((e["device_id"], e["status"]) for e in resolved) == [
        ("district:Hamborn", "resolved"),
        ("district:Mitte", "resolved"),
        ("district:Süd", "resolved"),
    ]
    assert {e["alert_id"] for e in resolved} == {e["alert_id"] for e in fired}


def test_a_device_silent_alone_in_a_busy_district_alerts_on_its_own() -> None:
    reg = city(districts=("Mitte",))
    live = Liveness(reg)
    families = {d: Family() for d in reg.devices}
    for root in families:
        live.track(root)
    others = [d for d in families if d != "d0-aq0"]
    hear_city(live, families, 0)
    for second in range(60, 241, 60):
        hear_city(live, families, second, others)
    fired = tick_city(live, families, 241)
    assert [(e["device_id"], e["rule"]) for e in fired] == [("d0-aq0", "device_offline")]


def test_a_district_episode_survives_a_restart_without_firing_again() -> None:
    reg = city(districts=("Mitte",))
    live = Liveness(reg)
    families = {d: Family() for d in reg.devices}
    for root in families:
        live.track(root)
    hear_city(live, families, 0)
    fired = tick_city(live, families, 200)
    assert [e["rule"] for e in fired] == ["district_silent"]
    loaded = {r: decode_family(encode_family(f)) for r, f in families.items()}
    again = Liveness(reg)
    again.restore(loaded)  # what a worker taking over rebuilds
    assert tick_city(again, loaded, 600) == []  # still silent: the same episode, no event
    hear_city(again, loaded, 700)
    resolved = tick_city(again, loaded, 701)
    assert [(e["status"], e["alert_id"]) for e in resolved] == [("resolved", fired[0]["alert_id"])]
