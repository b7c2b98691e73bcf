"""Device and district windows through the real broker, checked against a recomputation
in the test, also across a worker restart (SIGTERM and kill -9) in the middle of windows."""

from __future__ import annotations

import random
import signal
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.kafka.admin import ensure_topics
from streams.settings import Settings
from streams.tools.fleet import generate_fleet
from streams.tools.publish import device_messages
from streams.topics import METRICS_DEVICE, METRICS_DISTRICT, TELEMETRY_RAW
from tests.conftest import spawn
from tests.faults.audit import (
    Reading,
    audit_device_windows,
    audit_district_windows,
    district_keys,
    expected_device_windows,
)
from tests.kafkautil import consume_records, produce_messages

pytestmark = pytest.mark.kafka

MINUTE, FIVE = 60_000, 300_000
DEVICES, MINUTES, EVERY = 200, 10, 10_000  # 200 devices, 10 event-time minutes, a reading / 10 s


def fleet() -> list[dict[str, Any]]:
    devices = generate_fleet(seed=11, scale=0.2)[:DEVICES]
    assert len(devices) == DEVICES
    return devices


def readings(devices: list[dict[str, Any]], base: int, seed: int) -> list[dict[str, Any]]:
    """Every device every 10 s, seeded values; some pairs swapped (out of order, in grace)."""
    rng = random.Random(seed)
    out = []
    for device in devices:
        series = [
            {
                "device_id": device["device_id"],
                "ts": base + i * EVERY + rng.randrange(0, 3000),
                "seq": i + 1,
                "metrics": {"value": round(rng.gauss(500, 150), 3), "other": rng.randrange(0, 9)},
            }
            for i in range(MINUTES * MINUTE // EVERY)
        ]
        for i in range(1, len(series) - 1, 7):
            series[i], series[i + 1] = series[i + 1], series[i]
        out += series
    return out


def check(
    got_devices: list[Any],
    got_districts: list[Any],
    sent: list[dict[str, Any]],
    devices: list[dict[str, Any]],
    allow_repeats: bool = False,
) -> None:
    """Against the fault auditor's oracle (tests/faults/audit.py): nothing lost, counted
    twice or wrong; a repeat (at-least-once after kill -9) only where allowed."""
    ledger = [Reading(r["device_id"], r["seq"], r["ts"], r["metrics"]) for r in sent]
    want = expected_device_windows(ledger, MINUTE)
    for counts in (
        audit_device_windows(want, got_devices),
        audit_district_windows(want, devices, FIVE, got_districts),
    ):
        assert counts.clean, counts.examples
        assert counts.got >= counts.expected
        assert allow_repeats or not counts.duplicated, "emitted twice"


def window_settings(settings: Settings) -> Settings:
    # The readings are a backlog (event time 20 minutes ago): a pause longer than the
    # idle time would rightly close its windows early (streams/stages/windows.py), so keep it
    # longer than the test; the trailing readings below close the windows instead.
    return replace(settings, window_idle_s=600.0, district_wait_s=120.0)


def trailing(devices: list[dict[str, Any]], base: int) -> list[dict[str, Any]]:
    """One reading per device past the last window plus the grace: each device's
    watermark then closes all its windows (the trailing reading's own stays open)."""
    end = base + MINUTES * MINUTE
    return [
        {
            "device_id": d["device_id"],
            "ts": end + MINUTE + 15_000,
            "seq": 10_000,
            "metrics": {"value": 0},
        }
        for d in devices
    ]


RESTARTS = [
    (None, "at_least_once"),
    (signal.SIGTERM, "at_least_once"),
    (signal.SIGKILL, "at_least_once"),
    (signal.SIGKILL, "exactly_once"),
]


@pytest.mark.parametrize(
    ("restart", "guarantee"),
    RESTARTS,
    ids=lambda r: "steady" if r is None else r.name if isinstance(r, signal.Signals) else r,
)
async def test_windows_equal_an_independent_recomputation(
    settings: Settings, tmp_path: Path, restart: signal.Signals | None, guarantee: str
) -> None:
    settings = replace(window_settings(settings), processing_guarantee=guarantee)
    devices = fleet()
    base = (time.time_ns() // 1_000_000) - 20 * MINUTE
    base -= base % FIVE
    sent = readings(devices, base, seed=5)
    sent.sort(key=lambda r: r["ts"])  # roughly the order devices would send them in
    messages = [(r["device_id"].encode(), orjson.dumps(r)) for r in sent + trailing(devices, base)]
    await ensure_topics(settings)  # as `citystreams topics create` does before a city sends
    await produce_messages(
        settings.broker, settings.topic_prefix + "devices", device_messages(devices)
    )

    log = tmp_path / "worker-1.log"
    worker = spawn(settings, "streams", "worker", log=log)
    try:
        if restart is None:
            await produce_messages(settings.broker, settings.topic_prefix + TELEMETRY_RAW, messages)
        else:
            # Half the readings, then stop the worker while windows are open...
            half = len(messages) // 2
            await produce_messages(
                settings.broker, settings.topic_prefix + TELEMETRY_RAW, messages[:half]
            )
            await consume_records(
                settings.broker, settings.topic_prefix + METRICS_DEVICE, DEVICES * 3, 90
            )
            worker.send_signal(restart)
            worker.wait(60)
            # ...the rest arrives while it is down; a new worker resumes from its state.
            await produce_messages(
                settings.broker, settings.topic_prefix + TELEMETRY_RAW, messages[half:]
            )
            log = tmp_path / "worker-2.log"
            worker = spawn(settings, "streams", "worker", log=log)
        want = expected_device_windows(
            [Reading(r["device_id"], r["seq"], r["ts"], r["metrics"]) for r in sent], MINUTE
        )
        got_devices = await consume_records(
            settings.broker, settings.topic_prefix + METRICS_DEVICE, len(want), 180, settle=3
        )
        districts = district_keys(want, devices, FIVE)
        got_districts = await consume_records(
            settings.broker, settings.topic_prefix + METRICS_DISTRICT, len(districts), 120, settle=3
        )
        assert worker.poll() is None, log.read_text()[-3000:]
    finally:
        worker.terminate()
        worker.wait(30)
    # kill -9 between a window's output and the state that records it re-emits that
    # window, identical, after the restart (at-least-once); nothing may be lost.
    # Exactly-once: a read_committed consumer sees each window once, even then.
    check(
        [orjson.loads(r.value) for r in got_devices],
        [orjson.loads(r.value) for r in got_districts],
        sent,
        devices,
        allow_repeats=restart is signal.SIGKILL and guarantee == "at_least_once",
    )


async def test_windows_close_when_input_goes_quiet(settings: Settings, tmp_path: Path) -> None:
    # No reading ever passes the windows' ends: only the wall-clock idle timer can close
    # them (window end + grace passed, and the device silent for window_idle_s).
    settings = replace(settings, window_s=5, district_window_s=10, grace_s=1.0, window_idle_s=2.0)
    devices = fleet()[:6]
    await ensure_topics(settings)
    await produce_messages(
        settings.broker, settings.topic_prefix + "devices", device_messages(devices)
    )
    log = tmp_path / "worker.log"
    worker = spawn(settings, "streams", "worker", log=log)
    try:
        now = time.time_ns() // 1_000_000
        sent = [
            {"device_id": d["device_id"], "ts": now - 100 * i, "metrics": {"value": float(i)}}
            for d in devices
            for i in range(3)
        ]
        await produce_messages(
            settings.broker,
            settings.topic_prefix + TELEMETRY_RAW,
            [(r["device_id"].encode(), orjson.dumps(r)) for r in sent],
        )
        got = await consume_records(
            settings.broker, settings.topic_prefix + METRICS_DEVICE, 100, 30, settle=2
        )
        assert worker.poll() is None, log.read_text()[-3000:]
    finally:
        worker.terminate()
        worker.wait(30)
    windows = [orjson.loads(r.value) for r in got]
    counts = defaultdict(int)
    for r in sent:
        counts[(r["device_id"], r["ts"] - r["ts"] % 5000)] += 1
    assert {
        (w["device_id"], w["window_start"]): w["metrics"]["value"]["count"] for w in windows
    } == counts
