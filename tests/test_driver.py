"""The pipeline's behaviours, one per test, driven in-process (streams/testing.py): the
worker's own core and runtime classes over in-memory topics, with no broker and an
explicit wall clock. Event times are aligned to the minute."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from streams.testing import START_MS, PipelineDriver
from streams.topics import (
    ALERTS,
    DEADLETTER,
    METRICS_DEVICE,
    METRICS_DISTRICT,
    STATE_DEVICE,
    TELEMETRY_BY_DEVICE,
    TELEMETRY_ENRICHED,
)

S, MINUTE = 1000, 60_000
T0 = START_MS - 10 * MINUTE  # event times: ten minutes behind the wall clock


def room(device_id: str, parent: str | None = None) -> dict[str, Any]:
    return {
        "device_id": device_id,
        "kind": "classroom_air",
        "district": "Mitte",
        "site": "gs017",
        "lat": 51.43,
        "lon": 6.76,
        "heartbeat_s": 60,
        "parent": parent,
    }


def reading(device_id: str, ts: int, seq: int, co2: float = 600.0) -> dict[str, Any]:
    return {"device_id": device_id, "ts": ts, "seq": seq, "metrics": {"co2_ppm": co2}}


@pytest.fixture
def city() -> Iterator[PipelineDriver]:
    with PipelineDriver([room("r1"), room("r2"), room("r3")], window_s=60, grace_s=10) as d:
        yield d


def test_a_window_closes_on_its_watermark(city: PipelineDriver) -> None:
    for seq, second in enumerate((5, 30, 55), 1):
        city.send(reading("r1", T0 + second * S, seq, co2=500 + seq))
    assert city.read(METRICS_DEVICE) == []
    city.send(reading("r1", T0 + 71 * S, 4))  # past the window's end and the grace
    [window] = city.read(METRICS_DEVICE)
    assert (window["window_start"], window["window_end"]) == (T0, T0 + MINUTE)
    assert window["metrics"]["co2_ppm"]["count"] == 3
    assert window["metrics"]["co2_ppm"]["last"] == 503


def test_a_window_closes_on_the_idle_timer() -> None:
    with PipelineDriver([room("r1")], window_s=60, grace_s=10, window_idle_s=30) as d:
        now = d.now_ms
        d.send(reading("r1", now - 50 * S, 1))
        d.send(reading("r1", now - 20 * S, 2))
        d.advance(25)
        assert d.read(METRICS_DEVICE) == []  # silent 25 s: not yet
        d.advance(60)
        [window] = d.read(METRICS_DEVICE)
        assert window["window_start"] == now - MINUTE
        assert window["metrics"]["co2_ppm"]["count"] == 2


def test_a_late_reading_is_dead_lettered(city: PipelineDriver) -> None:
    city.send(reading("r1", T0 + 5 * S, 1))
    city.send(reading("r1", T0 + 80 * S, 2))  # closes [T0, T0 + 1 min)
    city.send(reading("r1", T0 + 50 * S, 3))  # in the closed window
    [dead] = city.read(DEADLETTER)
    assert dead["reason"] == "late"
    assert len(city.read(TELEMETRY_ENRICHED)) == 2


def test_a_gateway_batch_is_split_and_forwarded(city: PipelineDriver) -> None:
    owners = {d: city.owner(d) for d in ("r1", "r2", "r3")}
    gateway = (owners["r1"] + 1) % 3  # a gateway on another partition than r1's
    batch = {"readings": [reading(d, T0 + i * S, 1) for i, d in enumerate(owners)]}
    city.send(batch, key="gw-1", partition=gateway)
    forwarded = city.messages(TELEMETRY_BY_DEVICE)
    assert {m.partition for m in forwarded} == {p for p in owners.values() if p != gateway}
    enriched = city.messages(TELEMETRY_ENRICHED)
    assert {(m.key, m.partition) for m in enriched} == {(d.encode(), p) for d, p in owners.items()}


def test_a_repeated_seq_is_dropped(city: PipelineDriver) -> None:
    city.send(reading("r1", T0 + 5 * S, 7))
    city.send(reading("r1", T0 + 5 * S, 7))  # the same reading, sent again
    assert len(city.read(TELEMETRY_ENRICHED)) == 1
    assert city.metrics.duplicates._value.get() == 1


def test_a_co2_episode_fires_and_resolves_under_one_alert_id(city: PipelineDriver) -> None:
    # every 30 s: 6 min above 1000 ppm, 6 min above 2000 ppm, then 2 min of fresh air
    levels = [1500.0] * 12 + [2100.0] * 12 + [500.0] * 4
    for seq, co2 in enumerate(levels, 1):
        city.send(reading("r1", T0 + seq * 30 * S, seq, co2))
    events = [(a["rule"], a["severity"], a["status"], a["alert_id"]) for a in city.read(ALERTS)]
    assert [e[:3] for e in events] == [
        ("classroom_co2_high", "warning", "firing"),
        ("classroom_co2_critical", "critical", "firing"),
        ("classroom_co2_critical", "critical", "resolved"),
    ]
    assert len({e[3] for e in events}) == 1


def test_a_parent_outage_is_one_alert_listing_its_children() -> None:
    devices = [room("ap")] + [room(f"s{i}", parent="ap") for i in range(5)]
    with PipelineDriver(devices, window_s=60) as d:
        for minute in range(3):
            for n, device in enumerate(devices):
                d.send(reading(device["device_id"], d.now_ms - S, minute * 10 + n))
            d.advance(60)
        d.advance(240)  # everyone silent: past 3 heartbeats
        alerts = d.read(ALERTS)
    assert [(a["device_id"], a["rule"], a["status"]) for a in alerts] == [
        ("ap", "device_offline", "firing")
    ]
    assert alerts[0]["affected_children"] == 5


def test_a_restart_from_a_snapshot_mid_window_loses_nothing_and_emits_nothing_twice(
    city: PipelineDriver,
) -> None:
    city.send(reading("r1", T0 + 5 * S, 1))
    city.send(reading("r1", T0 + 15 * S, 2))
    city.checkpoint()  # the window is open in the snapshot
    city.send(reading("r1", T0 + 25 * S, 3))  # processed, not acknowledged...
    city.crash()  # ...so read again by the new worker, from the snapshot's state
    city.send(reading("r1", T0 + 80 * S, 4))
    windows = city.read(METRICS_DEVICE)
    assert [(w["window_start"], w["metrics"]["co2_ppm"]["count"]) for w in windows] == [(T0, 3)]


def test_a_partition_handed_over_keeps_its_open_windows(city: PipelineDriver) -> None:
    city.send(reading("r1", T0 + 5 * S, 1))
    city.send(reading("r1", T0 + 15 * S, 2))
    city.revoke()  # a rebalance: the state is written before the partition moves...
    city.assign([city.owner("r1")])  # ...and read back by its next owner
    city.send(reading("r1", T0 + 80 * S, 3))
    [window] = city.read(METRICS_DEVICE)
    assert window["metrics"]["co2_ppm"]["count"] == 2


def test_a_district_window_keeps_what_came_before_a_restart(city: PipelineDriver) -> None:
    rooms = ("r1", "r2", "r3")
    for minute in range(7):  # a reading a minute; a crash after the third
        for room_id in rooms:
            city.send(reading(room_id, T0 + minute * MINUTE + 5 * S, minute + 1))
        if minute == 2:
            city.checkpoint()
            city.crash()
    city.advance(1)  # the district timer: every room is past the district window's end
    [district] = [w for w in city.read(METRICS_DISTRICT) if w["window_start"] == T0]
    assert (district["devices"], district["metrics"]["co2_ppm"]["count"]) == (3, 15)


def test_a_checkpoint_sends_outputs_before_the_state_that_records_them(
    city: PipelineDriver,
) -> None:
    city.hold_acks()  # Kafka takes the outputs but has not acknowledged them yet
    city.send(reading("r1", T0 + 5 * S, 1))
    checkpoint = city.begin_checkpoint()
    assert city.messages(STATE_DEVICE) == []  # the state waits for its outputs' acks
    city.release_acks()
    city.finish(checkpoint)
    [state] = city.messages(STATE_DEVICE)
    [enriched] = city.messages(TELEMETRY_ENRICHED)
    assert city.landed.index(enriched) < city.landed.index(state)
    assert city.committed[(city.name("telemetry.raw"), city.owner("r1"))] == 1
