"""The operator commands, run as a user would, against the real broker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from streams.settings import Settings
from streams.topics import DEVICES, TELEMETRY_RAW
from tests.conftest import ROOT, env_for
from tests.kafkautil import consume_records

pytestmark = pytest.mark.kafka


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams", *args],
        env=env_for(settings),
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )


async def test_registry_generate_load_and_send(settings: Settings, tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.jsonl"
    generated = cli(
        settings, "registry", "generate", "--scale", "0.01", "--seed", "4", "-o", str(fleet)
    )
    assert generated.returncode == 0, generated.stderr
    records = [orjson.loads(line) for line in fleet.read_bytes().splitlines()]
    loaded = cli(settings, "registry", "load", str(fleet))
    assert loaded.returncode == 0, loaded.stderr
    got = await consume_records(settings.broker, settings.topic_prefix + DEVICES, len(records), 30)
    assert {r.key.decode() for r in got if r.key} == {r["device_id"] for r in records}

    readings = tmp_path / "readings.jsonl"
    lines = [
        orjson.dumps({"device_id": r["device_id"], "ts": 1, "metrics": {"x": 1}}) for r in records
    ]
    readings.write_bytes(b"\n".join([*lines, b"not json at all"]) + b"\n")
    sent = cli(settings, "send", str(readings))
    assert sent.returncode == 0, sent.stderr
    assert f"sent {len(lines) + 1} message(s)" in sent.stdout
    raw = await consume_records(
        settings.broker, settings.topic_prefix + TELEMETRY_RAW, len(lines) + 1, 30
    )
    assert sorted(r.value for r in raw) == sorted([*lines, b"not json at all"])


def test_registry_load_refuses_a_bad_file_with_line_numbers(
    settings: Settings, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"device_id": "ok-1", "kind": "traffic"}\n{oops\n')
    result = cli(settings, "registry", "load", str(bad))
    assert result.returncode == 1
    assert "line 1" in result.stderr and "line 2" in result.stderr
    assert "nothing published" in result.stderr
