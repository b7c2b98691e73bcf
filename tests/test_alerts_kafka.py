"""Alerts through the real broker: a classroom's CO2 episode, a silent device, and an
access point that goes silent with its 20 sensors. Also measures alert latency."""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from streams.kafka.admin import ensure_topics
from streams.settings import Settings
from streams.tools.publish import device_messages
from streams.topics import (
    ALERTS,
    DEVICES,
    OCCUPANCY,
    TELEMETRY_ENRICHED,
    TELEMETRY_RAW,
    topic_name,
)
from tests.conftest import spawn
from tests.kafkautil import consume_records, produce_messages

pytestmark = pytest.mark.kafka
log = logging.getLogger(__name__)

ROOMS = 100  # classrooms, each with one CO2 episode
EVERY = 30_000  # event time between a room's readings
HEARTBEAT = 2.0  # the access point, its sensors and the lone station: offline after 6 s


def device(device_id: str, kind: str, **extra: Any) -> dict[str, Any]:
    base = {"district": "Mitte", "site": "gs099", "lat": 51.43, "lon": 6.76}
    return {"device_id": device_id, "kind": kind} | base | extra


def co2(minute: float) -> float:
    """Below 1000 ppm for 2 minutes, above for 6, then back down."""
    return 1200.0 if 2 <= minute < 8 else 700.0


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def test_episodes_offline_and_correlation(settings: Settings, tmp_path: Path) -> None:
    rooms = [
        device(f"dui-mitte-gs099-r{i}-air", "classroom_air", heartbeat_s=600) for i in range(ROOMS)
    ]
    ap = device("dui-mitte-gs099-ap1", "wlan_ap", heartbeat_s=HEARTBEAT)
    sensors = [
        device(
            f"dui-mitte-gs099-s{i}-air",
            "classroom_air",
            parent=ap["device_id"],
            heartbeat_s=HEARTBEAT,
        )
        for i in range(20)
    ]
    lone = device("dui-mitte-aq9", "air_quality", heartbeat_s=HEARTBEAT)
    await ensure_topics(settings)
    await produce_messages(
        settings.broker,
        settings.topic_prefix + DEVICES,
        device_messages([*rooms, ap, *sensors, lone]),
    )
    worker = spawn(settings, "streams", "worker", log=tmp_path / "worker.log")
    producer = AIOKafkaProducer(bootstrap_servers=settings.broker, linger_ms=0)
    await producer.start()
    raw = settings.topic_prefix + TELEMETRY_RAW
    try:
        # Latency is measured on a running worker: wait until a first reading comes out.
        probe = {"device_id": lone["device_id"], "ts": now_ms(), "metrics": {"no2_ugm3": 20}}
        await producer.send_and_wait(raw, orjson.dumps(probe), key=lone["device_id"].encode())
        assert await consume_records(
            settings.broker, settings.topic_prefix + TELEMETRY_ENRICHED, 1, timeout=60
        )
        # The rooms' readings, 24 each over 12 event-time minutes, are sent over ~12 s of
        # wall time, interleaved with the liveness devices reporting every second.
        base = now_ms() - 30 * 60_000
        base -= base % 60_000
        steps = 12 * 60_000 // EVERY
        sent_at: dict[tuple[str, int], int] = {}
        for step in range(steps):
            for room in rooms:
                ts = base + step * EVERY
                r = {
                    "device_id": room["device_id"],
                    "ts": ts,
                    "metrics": {"co2_ppm": co2(step / 2)},
                }
                await producer.send(raw, orjson.dumps(r), key=room["device_id"].encode())
                sent_at[(room["device_id"], ts)] = now_ms()
            if step % 2 == 0:
                for d in (ap, *sensors, lone):
                    r = {"device_id": d["device_id"], "ts": now_ms(), "metrics": {"clients": 5}}
                    await producer.send(raw, orjson.dumps(r), key=d["device_id"].encode())
            await producer.flush()
            await asyncio.sleep(0.5)
        silent_from = now_ms()  # nothing more from anyone
        want = 2 * ROOMS + 2  # CO2 firing + resolved per room; the lone station; the AP
        records = await consume_records(
            settings.broker, settings.topic_prefix + ALERTS, want, timeout=60, settle=8
        )
        assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
    finally:
        await producer.stop()
        worker.terminate()
        worker.wait(30)

    events = [(r, orjson.loads(r.value)) for r in records]
    by_device: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for _, e in events:
        by_device[e["device_id"]].append(e)
    # Every room: exactly one firing and one resolved, the same alert_id, at the right
    # event times (fires 5 min into the high phase, resolves 1 min into the low one).
    for room in rooms:
        got = by_device.pop(room["device_id"])
        assert [(e["status"], e["rule"]) for e in got] == [
            ("firing", "classroom_co2_high"),
            ("resolved", "classroom_co2_high"),
        ]
        assert got[0]["alert_id"] == got[1]["alert_id"]
        assert (got[0]["starts_at"], got[0]["at"]) == (base + 2 * 60_000, base + 7 * 60_000)
        assert got[1]["ends_at"] == base + 9 * 60_000
    # The lone station and the AP are offline; the AP's 20 sensors raise nothing.
    offline = {d: [(e["rule"], e["status"]) for e in es] for d, es in by_device.items()}
    assert offline == {
        lone["device_id"]: [("device_offline", "firing")],
        ap["device_id"]: [("device_offline", "firing")],
    }
    ap_alert = by_device[ap["device_id"]][0]
    assert ap_alert["affected_children"] == 20
    # Within k x heartbeat + 10 s of wall time of the last report.
    for r, e in events:
        if e["rule"] == "device_offline":
            assert r.timestamp - silent_from <= 3 * HEARTBEAT * 1000 + 10_000, e
    # Latency: from the triggering reading's send to the alert record's append.
    latencies = sorted(
        r.timestamp - sent_at[(e["device_id"], e["at"])]
        for r, e in events
        if e["rule"].startswith("classroom")
    )
    p50 = statistics.median(latencies)
    p99 = latencies[int(0.99 * (len(latencies) - 1))]
    log.warning("alert latency over %d alerts: p50 %.0f ms, p99 %.0f ms", len(latencies), p50, p99)
    (tmp_path / "latency.txt").write_text(f"p50 {p50} ms p99 {p99} ms n {len(latencies)}\n")


async def test_occupancy_rule_reads_the_access_points_clients(
    settings: Settings, tmp_path: Path
) -> None:
    # An opt-in rule: CO2 alerts only while the classroom's access point has clients.
    rules = tmp_path / "rules.toml"
    rules.write_text(
        '[[rule]]\nname = "co2_occupied"\nkind = "classroom_air"\nmetric = "co2_ppm"\n'
        'condition = "above"\nthreshold = 1000.0\nfor = "2m"\nseverity = "warning"\n'
        'summary = "{device_id} {value}"\noccupancy = {metric = "clients", min = 1}\n'
    )
    settings = replace(settings, rules=str(rules))
    aps = [device(f"dui-mitte-gs09{i}-ap1", "wlan_ap", site=f"gs09{i}") for i in (1, 2)]
    rooms = [
        device(f"dui-mitte-gs09{i}-r1-air", "classroom_air", parent=ap["device_id"])
        for i, ap in zip((1, 2), aps, strict=True)
    ]
    await ensure_topics(settings)
    await produce_messages(
        settings.broker, settings.topic_prefix + DEVICES, device_messages([*aps, *rooms])
    )
    worker = spawn(settings, "streams", "worker", log=tmp_path / "worker.log")
    raw = settings.topic_prefix + TELEMETRY_RAW
    try:
        # gs091's access point has no clients, gs092's has 14.
        now = now_ms()
        clients = [
            {"device_id": ap["device_id"], "ts": now, "metrics": {"clients": n}}
            for ap, n in zip(aps, (0, 14), strict=True)
        ]
        await produce_messages(
            settings.broker, raw, [(c["device_id"].encode(), orjson.dumps(c)) for c in clients]
        )
        # The occupancy values travel to every worker first: they are on their topic
        # once the worker has processed the access points' readings (its start may
        # take longer than any fixed pause on a busy machine), then its follower reads
        # them within a fetch.
        occupancy = topic_name(settings.topic_prefix, OCCUPANCY, settings.app_id)
        assert len(await consume_records(settings.broker, occupancy, 2, timeout=90)) == 2
        await asyncio.sleep(2)
        readings = [
            {
                "device_id": room["device_id"],
                "ts": now - 10 * 60_000 + m * 60_000,
                "metrics": {"co2_ppm": 1500},
            }
            for m in range(4)
            for room in rooms
        ]
        await produce_messages(
            settings.broker, raw, [(r["device_id"].encode(), orjson.dumps(r)) for r in readings]
        )
        got = await consume_records(
            settings.broker, settings.topic_prefix + ALERTS, 1, timeout=60, settle=4
        )
        assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
    finally:
        worker.terminate()
        worker.wait(30)
    assert [(orjson.loads(r.value)["device_id"], orjson.loads(r.value)["status"]) for r in got] == [
        (rooms[1]["device_id"], "firing")
    ]


async def test_a_silent_district_is_one_alert(settings: Settings, tmp_path: Path) -> None:
    """40 stations of one district stop together; one station of another district stops
    alone while its 19 neighbours go on: one district_silent (40 devices), one
    device_offline; the district's alert resolves when its stations report again."""
    quiet = [
        device(f"dui-walsum-aq{i}", "air_quality", district="Walsum", heartbeat_s=HEARTBEAT)
        for i in range(40)
    ]
    busy = [
        device(f"dui-sued-aq{i}", "air_quality", district="Süd", heartbeat_s=HEARTBEAT)
        for i in range(20)
    ]
    await ensure_topics(settings)
    await produce_messages(
        settings.broker, settings.topic_prefix + DEVICES, device_messages([*quiet, *busy])
    )
    worker = spawn(settings, "streams", "worker", log=tmp_path / "worker.log")
    producer = AIOKafkaProducer(bootstrap_servers=settings.broker, linger_ms=5)
    await producer.start()
    raw = settings.topic_prefix + TELEMETRY_RAW

    async def report(devices: list[dict[str, Any]]) -> None:
        for d in devices:
            r = {"device_id": d["device_id"], "ts": now_ms(), "metrics": {"no2_ugm3": 20}}
            await producer.send(raw, orjson.dumps(r), key=d["device_id"].encode())
        await producer.flush()

    try:
        await report(busy)
        assert await consume_records(
            settings.broker, settings.topic_prefix + TELEMETRY_ENRICHED, 20, timeout=60
        )
        for _ in range(8):  # everyone reports every second for a while
            await report([*quiet, *busy])
            await asyncio.sleep(1)
        for _ in range(15):  # Walsum falls silent, and one station of Süd
            await report(busy[1:])
            await asyncio.sleep(1)
        for _ in range(6):  # Walsum is back
            await report([*quiet, *busy[1:]])
            await asyncio.sleep(1)
        stopped = now_ms()  # (from here everyone is silent: what follows is not judged)
        records = await consume_records(
            settings.broker, settings.topic_prefix + ALERTS, 3, timeout=30, settle=5
        )
        assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
    finally:
        await producer.stop()
        worker.terminate()
        worker.wait(30)
    events = {
        (r.key, e["status"]): e for r in records if (e := orjson.loads(r.value))["at"] < stopped
    }
    assert sorted(events) == [
        (b"district:Walsum", "firing"),
        (b"district:Walsum", "resolved"),
        (busy[0]["device_id"].encode(), "firing"),
    ], events
    fired = events[(b"district:Walsum", "firing")]
    assert fired["rule"] == "district_silent" and fired["scope"] == "district"
    # (Counted when it opened: the stations whose limit had passed by that tick.)
    assert 5 <= fired["affected_devices"] <= 40
    assert all(d.startswith("dui-walsum-aq") for d in fired["affected_sample"])
    assert events[(busy[0]["device_id"].encode(), "firing")]["rule"] == "device_offline"
