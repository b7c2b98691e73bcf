"""Cardinality: 100,000 distinct device ids (an attacker controls device ids) and
registered devices sending made-up metric names leave /metrics under the bound that
streams/metrics.py documents."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import orjson
import pytest

from streams.devices import KIND_METRICS
from streams.kafka.admin import ensure_topics
from streams.metrics import Metrics
from streams.settings import Settings
from streams.stages.rules import load_rules
from streams.tools.fleet import generate_fleet
from streams.tools.publish import device_messages
from streams.topics import DEVICES, TELEMETRY_RAW
from tests.conftest import free_port, spawn
from tests.kafkautil import produce_messages

pytestmark = pytest.mark.kafka
IDS = 100_000


def series(text: str) -> int:
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


async def test_series_stay_bounded_whatever_device_ids_arrive(
    settings: Settings, tmp_path: Path
) -> None:
    settings = replace(
        settings,
        metrics_port=free_port(),
        window_s=1,
        district_window_s=2,
        grace_s=0.5,
        window_idle_s=1.0,
        district_wait_s=2.0,
    )
    fleet = generate_fleet(seed=4, scale=0.05)
    districts = {d["district"] for d in fleet}
    await ensure_topics(settings)
    await produce_messages(settings.broker, settings.topic_prefix + DEVICES, device_messages(fleet))
    worker = spawn(settings, "streams", "worker", log=tmp_path / "worker.log")
    try:
        now = time.time_ns() // 1_000_000
        batches = [
            {
                "readings": [
                    {"device_id": f"evil-{i:06d}", "ts": now, "metrics": {f"m{i % 997}": 1.0}}
                    for i in range(b, b + 500)  # 35 kB: under the 64 kB message limit
                ]
            }
            for b in range(0, IDS, 500)
        ]
        # Registered devices with 40 made-up metric names each, besides their own.
        made_up = [
            {
                "device_id": d["device_id"],
                "ts": now,
                "metrics": {
                    **{f"x{j}_{k}": 1.0 for j, k in enumerate(range(40))},
                    KIND_METRICS[str(d["kind"])][0]: 5.0,
                },
            }
            for d in fleet
        ]
        messages = [(b"gw", orjson.dumps(b)) for b in batches]
        messages += [(str(r["device_id"]).encode(), orjson.dumps(r)) for r in made_up]
        await produce_messages(settings.broker, settings.topic_prefix + TELEMETRY_RAW, messages)
        want = IDS + len(made_up)
        text = ""
        for _ in range(180):
            await asyncio.sleep(1)
            try:
                text = await asyncio.to_thread(scrape, settings.metrics_port)
            except OSError:
                continue
            counts = [
                line
                for line in text.splitlines()
                if line.startswith("citystreams_readings_in_total ")
            ]
            if (
                counts
                and float(counts[0].split()[1]) >= want
                and "citystreams_district_metric{" in text
            ):
                break
        else:
            found = [
                line
                for line in text.splitlines()
                if "readings_in_total " in line or "district_windows_total{" in line
            ]
            raise AssertionError(f"the worker never counted every reading: {found[:5]}")
        assert worker.poll() is None
    finally:
        worker.terminate()
        worker.wait(30)

    fixed = series(__import__("prometheus_client").generate_latest(Metrics().registry).decode())
    rules = len(load_rules().rules)
    partitions, inputs = settings.partitions, 3
    bound = fixed + inputs * partitions + len(districts) * (3 * (rules + 1) + 3 * 20 + 3 * 7)
    got = series(text)
    (tmp_path / "series.txt").write_text(f"series {got} bound {bound} fixed {fixed}\n")
    assert fixed < got <= bound, (got, bound)
    assert "evil-" not in text and "x0_0" not in text  # neither ids nor made-up names
