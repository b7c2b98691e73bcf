"""The operator commands, run as a user would: against the real broker (marked kafka),
and their error paths and the offline backtest without one."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from streams.settings import Settings
from streams.tools.backtest import registry_beside
from streams.topics import DEVICES, TELEMETRY_RAW
from tests.conftest import ROOT, cli, free_port
from tests.kafkautil import consume_records


def offline(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """A command without a broker: CITYSTREAMS_BROKER is a port nothing listens on."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CITYSTREAMS_")}
    environ |= {
        "CITYSTREAMS_BROKER": f"127.0.0.1:{free_port()}",
        "CITYSTREAMS_STATE_DIR": str(tmp_path / "state"),
        "PYTHONPATH": str(ROOT),
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "streams", *args],
        env=environ,
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
        timeout=60,
    )


@pytest.mark.kafka
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


def test_registry_load_refuses_a_bad_file_with_line_numbers(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"device_id": "ok-1", "kind": "traffic"}\n{oops\n')
    result = offline(tmp_path, "registry", "load", str(bad))
    assert result.returncode == 1
    assert "line 1" in result.stderr and "line 2" in result.stderr
    assert "nothing published" in result.stderr


RECORDINGS = ROOT / "schemas" / "examples" / "recordings"


def test_backtest_lists_the_episodes_a_rule_set_would_raise(tmp_path: Path) -> None:
    args = ["backtest", "--input", str(RECORDINGS / "classroom-co2.jsonl")]
    args += ["--registry", str(RECORDINGS / "classroom-devices.jsonl")]
    result = offline(tmp_path, *args)
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
        (ROOT / "streams" / "stages" / "default_rules.toml")
        .read_text()
        .replace(
            'threshold = 1000.0\nclear = 900.0\nfor = "5m"',
            'threshold = 750.0\nclear = 700.0\nfor = "1m"',
        )
    )
    result = offline(tmp_path, *args, "--rules", str(strict))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1].split()[1:3] == ["12:00:00", "17m00s"]


@pytest.mark.kafka
def test_a_bad_rules_file_stops_the_worker_with_line_and_reason(
    settings: Settings, tmp_path: Path
) -> None:
    bad = tmp_path / "rules.toml"
    bad.write_text('[[rule]]\nname = "x"\nkind = "classroom_air"\n\n[[rule]]\nname = "y"\n')
    env_settings = dataclasses.replace(settings, rules=str(bad))
    result = cli(env_settings, "worker")
    assert result.returncode == 1
    assert result.stderr.strip() == f"citystreams: {bad}:1 (x): metric is required"


@pytest.mark.kafka
async def test_alerts_tail_shows_alerts_as_they_happen(settings: Settings) -> None:
    from streams.kafka.admin import ensure_topics
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


def test_backtest_finds_the_registry_next_to_the_recording(tmp_path: Path) -> None:
    recording = tmp_path / "school-co2.jsonl"
    shutil.copy(RECORDINGS / "classroom-co2.jsonl", recording)
    # No device records beside it: the simulated fleet, which has none of these devices.
    result = offline(tmp_path, "backtest", "--input", str(recording))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == (
        "0 episode(s) from 60 reading(s): none; 60 of unknown devices"
    )
    assert result.stderr.splitlines() == [
        f"backtest: no device records next to {recording}: the simulated city's fleet "
        "(seed 1; --registry names a file)"
    ]
    devices = tmp_path / "school-devices.jsonl"
    shutil.copy(RECORDINGS / "classroom-devices.jsonl", devices)
    result = offline(tmp_path, "backtest", "--input", str(recording))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "1 episode(s) from 60 reading(s): classroom_co2_high 1"
    assert result.stderr.splitlines() == [
        f"backtest: device records from {devices} (next to the recording; --registry names others)"
    ]
    # --registry still decides, and says nothing about the files beside the recording.
    other = tmp_path / "other.jsonl"
    other.write_text("")
    result = offline(tmp_path, "backtest", "--input", str(recording), "--registry", str(other))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].endswith("; 60 of unknown devices")
    assert result.stderr == ""


def test_registry_beside_takes_the_longest_name_prefix_then_devices(tmp_path: Path) -> None:
    recording = tmp_path / "gs017-r12-co2.jsonl"
    recording.write_text("")
    assert registry_beside(recording) is None
    for name in ("devices.csv", "gs017-devices.csv", "gs017-r12-devices.jsonl", "co2-devices.csv"):
        (tmp_path / name).write_text("")
    assert registry_beside(recording) == tmp_path / "gs017-r12-devices.jsonl"
    (tmp_path / "gs017-r12-devices.jsonl").unlink()
    assert registry_beside(recording) == tmp_path / "gs017-devices.csv"
    (tmp_path / "gs017-devices.csv").unlink()
    assert registry_beside(recording) == tmp_path / "devices.csv"
    (tmp_path / "devices.jsonl").write_text("")
    assert registry_beside(recording) == tmp_path / "devices.jsonl"
    # A registry given as the recording is not its own registry.
    assert registry_beside(tmp_path / "devices.jsonl") == tmp_path / "devices.csv"


def one_line_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    """The error line of a command that failed as it should: exit code, one line."""
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("citystreams"), lines[0]
    return lines[0]


# {missing}: a file that does not exist; {dir}: a directory; {rec}: the example recording.
ERRORS = [
    (["send", "{missing}"], 2, "citystreams: {missing}: No such file or directory"),
    (["send", "{dir}"], 2, "citystreams: {dir}: Is a directory"),
    (["registry", "load", "{missing}"], 2, "citystreams: {missing}: No such file or directory"),
    (["registry", "load"], 2, "citystreams: registry load needs a FILE"),
    (
        ["registry", "generate", "--scale", "0.01", "-o", "{dir}/no/such/fleet.jsonl"],
        2,
        "citystreams: {dir}/no/such/fleet.jsonl: No such file or directory",
    ),
    (["backtest", "--input", "{missing}"], 2, "citystreams: {missing}: No such file or directory"),
    (["backtest", "--input", "{dir}"], 2, "citystreams: {dir}: Is a directory"),
    (
        ["backtest", "--input", "{rec}", "--registry", "{missing}"],
        2,
        "citystreams: {missing}: No such file or directory",
    ),
    (
        ["backtest", "--input", "{rec}", "--rules", "{missing}"],
        1,
        "citystreams: {missing}: cannot read (No such file or directory)",
    ),
    (["backtest"], 2, "citystreams backtest: the following arguments are required: --input"),
    (["backtest", "--input", "{rec}", "--seed", "x"], 2, "citystreams backtest: argument --seed"),
    (["send"], 2, "citystreams send: the following arguments are required: file"),
    (["no-such-command"], 2, "citystreams: argument COMMAND: invalid choice: 'no-such-command'"),
    (["tail", "no.such.topic"], 2, "citystreams: 'no.such.topic' is not one of"),
    (["acls", "--consumer", "x"], 2, "citystreams: --consumer 'x': expected USER:GROUP:TOPIC"),
]


@pytest.mark.parametrize(("args", "code", "line"), ERRORS, ids=[" ".join(e[0]) for e in ERRORS])
def test_an_error_is_one_line_and_an_exit_code(
    tmp_path: Path, args: list[str], code: int, line: str
) -> None:
    places = {
        "missing": str(tmp_path / "missing.jsonl"),
        "dir": str(tmp_path),
        "rec": str(RECORDINGS / "classroom-co2.jsonl"),
    }
    result = offline(tmp_path, *(a.format(**places) for a in args))
    assert one_line_error(result, code).startswith(line.format(**places))


def test_a_bad_setting_is_one_line(tmp_path: Path) -> None:
    result = offline(tmp_path, "settings", CITYSTREAMS_PARTITIONS="many")
    assert one_line_error(result, 2).startswith("citystreams: CITYSTREAMS_PARTITIONS: ")


@pytest.mark.parametrize(
    "args",
    [
        ["send", str(RECORDINGS / "classroom-co2.jsonl")],
        ["registry", "load", str(RECORDINGS / "classroom-devices.jsonl")],
        ["tail", "alerts"],
    ],
    ids=["send", "registry load", "tail"],
)
def test_no_broker_is_one_line_after_the_clients_log(tmp_path: Path, args: list[str]) -> None:
    # aiokafka's own log line above says why (refused, TLS, login); the verdict is ours.
    port = free_port()
    result = offline(tmp_path, *args, CITYSTREAMS_BROKER=f"127.0.0.1:{port}")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    ours = [line for line in result.stderr.splitlines() if line.startswith("citystreams")]
    assert len(ours) == 1 and ours[0] == result.stderr.splitlines()[-1], result.stderr
    assert f"Kafka at 127.0.0.1:{port}" in ours[0]
