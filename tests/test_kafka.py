"""The project's own Kafka, through the real broker: round trips, restart, errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from streams.kafka.admin import AdminError, ensure_topics
from streams.kafka.local import LocalKafka
from streams.settings import Settings
from streams.topics import ALL_TOPICS, TELEMETRY_RAW, TopicSpec, topic_name
from tests.apps.echo import ECHO_IN, ECHO_OUT
from tests.conftest import ROOT, free_port, spawn
from tests.kafkautil import consume, produce

pytestmark = pytest.mark.kafka


async def test_produce_consume_round_trip(settings: Settings) -> None:
    topic = settings.topic_prefix + "roundtrip"
    await ensure_topics(settings, [TopicSpec(topic, settings.partitions, {})])
    sent = [f"reading-{i}".encode() for i in range(100)]
    await produce(settings.broker, topic, sent)
    got = await consume(settings.broker, topic, len(sent))
    assert sorted(got) == sorted(sent)


async def test_topics_create_is_idempotent_and_compacts_devices(settings: Settings) -> None:
    first = await ensure_topics(settings)
    again = await ensure_topics(settings)
    assert sorted(first) == sorted(
        topic_name(settings.topic_prefix, t, settings.app_id) for t in ALL_TOPICS
    )
    # Internal topics belong to the app: another app id on the same prefix has its own.
    assert f"{settings.topic_prefix}{settings.app_id}.state.device" in first
    assert again == []


async def test_topics_with_another_partition_count_are_refused(settings: Settings) -> None:
    # Partition p of telemetry.raw and of the state topics must hold the same devices.
    raw = settings.topic_prefix + TELEMETRY_RAW
    await ensure_topics(settings, [TopicSpec(raw, settings.partitions + 1, {})])
    with pytest.raises(AdminError, match=f"{raw} has {settings.partitions + 1} partitions"):
        await ensure_topics(settings)


async def test_faust_agent_reads_one_topic_and_writes_another(
    settings: Settings, tmp_path: Path
) -> None:
    specs = [
        TopicSpec(settings.topic_prefix + t, settings.partitions, {}) for t in (ECHO_IN, ECHO_OUT)
    ]
    await ensure_topics(settings, specs)
    sent = [f"co2 {i}".encode() for i in range(50)]
    await produce(settings.broker, settings.topic_prefix + ECHO_IN, sent)
    worker = spawn(settings, "tests.apps.echo", log=tmp_path / "worker.log")
    try:
        got = await consume(settings.broker, settings.topic_prefix + ECHO_OUT, len(sent), 90)
    finally:
        worker.terminate()
        worker.wait(30)
    assert sorted(g.split(b"|")[0] for g in got) == sorted(v.upper() for v in sent), (
        tmp_path / "worker.log"
    ).read_text()


async def test_two_workers_share_the_partitions(settings: Settings, tmp_path: Path) -> None:
    specs = [
        TopicSpec(settings.topic_prefix + t, settings.partitions, {}) for t in (ECHO_IN, ECHO_OUT)
    ]
    await ensure_topics(settings, specs)
    workers = [spawn(settings, "tests.apps.echo", log=tmp_path / f"w{i}.log") for i in (1, 2)]
    try:
        # Let both join the group before the input arrives, then check who handled what.
        await consume(settings.broker, settings.topic_prefix + ECHO_OUT, 1, timeout=8)
        sent = [f"reading {i}".encode() for i in range(300)]
        await produce(settings.broker, settings.topic_prefix + ECHO_IN, sent)
        got = await consume(settings.broker, settings.topic_prefix + ECHO_OUT, len(sent), 90)
        assert all(w.poll() is None for w in workers)
    finally:
        for w in workers:
            w.terminate()
            w.wait(30)
    assert {g.split(b"|")[0] for g in got} == {v.upper() for v in sent}
    assert {g.split(b"|")[1] for g in got} == {str(w.pid).encode() for w in workers}


async def test_stop_and_start_keeps_messages(tmp_path: Path, kafka_cache: Path) -> None:
    settings = Settings.from_env(
        {}, state_dir=tmp_path, kafka_cache=kafka_cache, kafka_controller_port=free_port()
    )
    kafka = LocalKafka(settings, port=free_port())
    kafka.start()
    try:
        assert kafka.status().running
        here = Settings.from_env({}, broker=kafka.bootstrap)
        await ensure_topics(here, [TopicSpec("kept", 1, {})])
        await produce(kafka.bootstrap, "kept", [b"before restart"])
        assert kafka.stop()
        assert not kafka.status().running
        kafka.start()
        assert await consume(kafka.bootstrap, "kept", 1) == [b"before restart"]
    finally:
        kafka.stop()


def test_cli_status_start_stop(tmp_path: Path) -> None:
    env = dict(os.environ)
    env.update(
        CITYSTREAMS_STATE_DIR=str(tmp_path),
        CITYSTREAMS_BROKER=f"127.0.0.1:{free_port()}",
        CITYSTREAMS_KAFKA_CONTROLLER_PORT=str(free_port()),
    )

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "streams", *args]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT, check=False)

    bootstrap = env["CITYSTREAMS_BROKER"]
    assert cli("kafka", "status").returncode == 3
    started = cli("kafka", "start")
    try:
        assert started.returncode == 0, started.stderr
        assert started.stdout.strip() == bootstrap
        status = cli("kafka", "status")
        assert status.returncode == 0
        assert status.stdout.startswith("up") and bootstrap in status.stdout
    finally:
        assert cli("kafka", "stop").returncode == 0
    assert cli("kafka", "status").stdout.startswith("down")


def test_missing_java_is_one_actionable_line(tmp_path: Path) -> None:
    env = dict(os.environ, PATH=str(tmp_path), CITYSTREAMS_STATE_DIR=str(tmp_path))
    env.pop("CITYSTREAMS_JAVA", None)
    proc = subprocess.run(
        [sys.executable, "-m", "streams", "kafka", "start"],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Java 17+" in lines[0] and "install a JDK" in lines[0]
