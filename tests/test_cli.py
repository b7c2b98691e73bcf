"""The operator commands, run as a user would, against the real broker."""

from __future__ import annotations

import dataclasses
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


RECORDINGS = ROOT / "schemas" / "examples" / "recordings"


def test_backtest_lists_the_episodes_a_rule_set_would_raise(
    settings: Settings, tmp_path: Path
) -> None:
    args = ["backtest", "--input", str(RECORDINGS / "classroom-co2.jsonl")]
    args += ["--registry", str(RECORDINGS / "classroom-devices.jsonl")]
    result = cli(settings, *args)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    # CO2 above 1000 ppm from 12:03, above 2000 from 12:09, down at 12:16: one episode,
    # escalated to critical, resolved at 12:17 after a minute below the clear levels.
    assert lines[1].split()[:5] == [
        "2026-11-27",
        "12:03:00",
        "14m00s",
        "critical",
        "classroom_co2_high+classroom_co2_critical",
    ]
    assert lines[-1].startswith("1 episode(s) from 60 reading(s)")
    # A stricter rule set (750 ppm for 1 min) raises it from the first reading (800 ppm):
    # the change can be judged before it is deployed.
    strict = tmp_path / "strict.toml"
    strict.write_text(
        (ROOT / "streams" / "default_rules.toml")
        .read_text()
        .replace(
            'threshold = 1000.0\nclear = 900.0\nfor = "5m"',
            'threshold = 750.0\nclear = 700.0\nfor = "1m"',
        )
    )
    result = cli(settings, *args, "--rules", str(strict))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1].split()[1:3] == ["12:00:00", "17m00s"]


def test_a_bad_rules_file_stops_the_worker_with_line_and_reason(
    settings: Settings, tmp_path: Path
) -> None:
    bad = tmp_path / "rules.toml"
    bad.write_text('[[rule]]\nname = "x"\nkind = "classroom_air"\n\n[[rule]]\nname = "y"\n')
    env_settings = dataclasses.replace(settings, rules=str(bad))
    result = cli(env_settings, "worker")
    assert result.returncode == 1
    assert result.stderr.strip() == f"citystreams: {bad}:1 (x): metric is required"


async def test_alerts_tail_shows_alerts_as_they_happen(settings: Settings) -> None:
    from streams.admin import ensure_topics
    from streams.topics import ALERTS
    from tests.kafkautil import produce_messages

    await ensure_topics(settings)
    record = orjson.loads(
        (ROOT / "schemas/examples/valid/alert/contract-example-firing.json").read_bytes()
    )
    await produce_messages(
        settings.broker, settings.topic_prefix + ALERTS, [(b"k", orjson.dumps(record))]
    )
    result = cli(settings, "alerts", "tail", "--from-beginning", "--count", "1")
    assert result.returncode == 0, result.stderr
    assert "FIRING" in result.stdout and record["rule"] in result.stdout
    assert record["summary"] in result.stdout and record["alert_id"] in result.stdout
