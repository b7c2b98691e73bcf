"""A real Prometheus (Debian's package) scrapes a real worker: the readings count comes
back through PromQL, and the shipped rules raise a firing city alert."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from streams.kafka.admin import ensure_topics
from streams.settings import Settings
from streams.tools.publish import device_messages
from streams.topics import DEVICES, TELEMETRY_RAW
from tests.conftest import free_port, spawn, until
from tests.kafkautil import produce_messages

pytestmark = pytest.mark.kafka
RULES = Path(__file__).resolve().parent.parent / "deploy" / "prometheus" / "rules"


def api(port: int, path: str, **params: str) -> Any:
    url = f"http://127.0.0.1:{port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())["data"]


async def test_prometheus_scrapes_a_worker_and_fires_a_city_alert(
    settings: Settings, tmp_path: Path
) -> None:
    prometheus = shutil.which("prometheus")
    assert prometheus, "apt-get install prometheus (.ci/run does)"
    settings = replace(settings, metrics_port=free_port())
    # The shipped rules, evaluated every second instead of every 30 s (their `for:` stays).
    rules = []
    for path in sorted(RULES.glob("*.yml")):
        doc = yaml.safe_load(path.read_text())
        for group in doc["groups"]:
            group.pop("interval", None)
        (tmp_path / path.name).write_text(yaml.safe_dump(doc))
        rules.append(str(tmp_path / path.name))
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": rules,
        "scrape_configs": [
            {
                "job_name": "citystreams",
                "static_configs": [{"targets": [f"127.0.0.1:{settings.metrics_port}"]}],
            }
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    prom = subprocess.Popen(  # noqa: ASYNC220 - starting it does not block
        [
            prometheus,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=open(tmp_path / "prometheus.log", "wb"),  # noqa: SIM115, ASYNC230
        stderr=subprocess.STDOUT,
    )
    room = {
        "device_id": "dui-mitte-gs017-r12-air",
        "kind": "classroom_air",
        "district": "Mitte",
        "site": "gs017",
        "lat": 51.43,
        "lon": 6.76,
        "heartbeat_s": 3600,
    }
    await ensure_topics(settings)
    await produce_messages(
        settings.broker, settings.topic_prefix + DEVICES, device_messages([room])
    )
    worker = spawn(settings, "streams", "worker", log=tmp_path / "worker.log")
    try:
        # 8 minutes of event time at 2500 ppm: a critical CO2 episode opens.
        now = time.time_ns() // 1_000_000
        sent = [
            {
                "device_id": room["device_id"],
                "ts": now - 10 * 60_000 + i * 15_000,
                "metrics": {"co2_ppm": 2500.0},
            }
            for i in range(33)
        ]
        await produce_messages(
            settings.broker,
            settings.topic_prefix + TELEMETRY_RAW,
            [(room["device_id"].encode(), orjson.dumps(r)) for r in sent],
        )

        def readings() -> bool:
            result = api(port, "query", query="sum(citystreams_readings_in_total)")["result"]
            return bool(result) and float(result[0]["value"][1]) == len(sent)

        await until("the readings count in Prometheus", readings, 90)

        def firing() -> list[dict[str, Any]]:
            return [
                a
                for a in api(port, "alerts")["alerts"]
                if a["labels"]["alertname"] == "CitystreamsCriticalCityAlert"
                and a["state"] == "firing"
            ]

        alerts = await until("a firing CitystreamsCriticalCityAlert", firing, 150)
        assert alerts[0]["labels"]["rule"] == "classroom_co2_critical"
        assert worker.poll() is None
    finally:
        worker.terminate()
        prom.terminate()
        worker.wait(30)
        prom.wait(30)
