"""`citystreams up` as a user runs it, bounded: the simulated city's scenarios come out
as the alerts and dead letters they promise."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections import Counter
from pathlib import Path

import orjson
import pytest

from streams.settings import Settings
from streams.topics import ALERTS, DEADLETTER
from tests.conftest import ROOT, env_for
from tests.kafkautil import consume_records

pytestmark = pytest.mark.kafka


async def test_up_runs_the_city_and_its_scenarios_raise_their_alerts(
    settings: Settings, tmp_path: Path
) -> None:
    scenarios = ["unventilated_classroom@0", "cell_outage@1", "uplink_failure@1", "bad_data@0"]
    args = ["up", "--external-kafka", "--duration", "75", "--seed", "3", "--scale", "0.05"]
    args += ["--speed", "20"] + [f"--scenario={s}" for s in scenarios]
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "streams", *args],
        env=env_for(settings),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "readings" in result.stdout and "/metrics" in result.stdout
    assert "  alert  " in result.stdout  # the live view showed alerts as they happened

    alerts = [
        orjson.loads(r.value)
        for r in await consume_records(
            settings.broker, settings.topic_prefix + ALERTS, 10**6, timeout=10
        )
    ]
    firing = Counter((a["rule"], a["kind"]) for a in alerts if a["status"] == "firing")
    assert firing[("classroom_co2_high", "classroom_air")] >= 1, firing
    assert firing[("device_offline", "cell_5g")] == 1, firing
    # The uplink failure: one alert for the access point, none for the sensors behind it.
    assert firing[("device_offline", "wlan_ap")] == 1, firing
    assert firing[("device_offline", "classroom_air")] == 0, firing
    ap = next(a for a in alerts if a["rule"] == "device_offline" and a["kind"] == "wlan_ap")
    assert ap["affected_children"] >= 1

    dead = await consume_records(
        settings.broker, settings.topic_prefix + DEADLETTER, 10**6, timeout=10
    )
    reasons = Counter(orjson.loads(r.value)["reason"] for r in dead)
    assert {"invalid_json", "too_large", "schema", "late", "ts_future"} <= set(reasons), reasons
