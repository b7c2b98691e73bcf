"""Ingest through the real broker and a real worker process."""

from __future__ import annotations

import asyncio
import random
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from streams.settings import Settings
from streams.tools.fleet import generate_fleet
from streams.tools.publish import device_messages
from streams.topics import DEADLETTER, DEVICES, TELEMETRY_ENRICHED, TELEMETRY_RAW
from tests.conftest import spawn
from tests.kafkautil import consume_records, produce_messages

pytestmark = pytest.mark.kafka


@pytest.fixture
async def worker(settings: Settings, tmp_path: Path) -> AsyncIterator[subprocess.Popen[bytes]]:
    """One `citystreams worker` process with this test's settings."""
    proc = spawn(settings, "streams", "worker", log=tmp_path / "worker.log")
    yield proc
    proc.terminate()
    proc.wait(30)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def bad_messages(rng: random.Random, count: int) -> list[tuple[bytes, bytes | None, str]]:
    """(key, value, expected reason) for ``count`` malformed messages of varied kinds."""
    ts = now_ms()
    makers = [
        (lambda i: b'{"device_id": "x", "ts": ', "invalid_json"),
        (lambda i: b'{"device_id":"a","ts":%d,"metrics":{"x":NaN}}' % ts, "invalid_json"),
        (lambda i: b"", "invalid_json"),
        (lambda i: bytes(rng.randrange(0, 32) for _ in range(40)), "invalid_json"),
        (lambda i: b'{"device_id": "\xc3\x28"}', "invalid_utf8"),
        (lambda i: b'{"pad": "' + b"x" * 70_000 + b'"}', "too_large"),
        (lambda i: orjson.dumps({"device_id": 42, "ts": ts, "metrics": {"x": 1}}), "schema"),
        (lambda i: orjson.dumps({"device_id": "a", "ts": ts, "metrics": {"x": "hi"}}), "schema"),
        (lambda i: orjson.dumps({"device_id": "a", "ts": ts}), "schema"),
        (
            lambda i: orjson.dumps(
                {"device_id": f"dui-ghost-{i}", "ts": ts, "seq": 1, "metrics": {"x": 1}}
            ),
            "unknown_device",
        ),
    ]
    out = []
    for i in range(count):
        make, reason = makers[i % len(makers)]
        out.append((f"bad-{i}".encode(), make(i), reason))
    return out


async def test_ten_thousand_readings_one_thousand_bad(
    settings: Settings, worker: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    rng = random.Random(7)
    fleet = generate_fleet(seed=3, scale=0.1)
    ids = [str(d["device_id"]) for d in fleet]
    await produce_messages(settings.broker, settings.topic_prefix + DEVICES, device_messages(fleet))

    seqs: Counter[str] = Counter()
    start = now_ms() - 60_000

    def valid(device_id: str) -> dict[str, object]:
        # In order per device (the shuffle below keeps readings well within the grace).
        seqs[device_id] += 1
        return {
            "device_id": device_id,
            "ts": start + seqs[device_id] * 10,
            "seq": seqs[device_id],
            "metrics": {"co2_ppm": rng.uniform(400, 2500), "temperature_c": 21.0},
        }

    singles = [valid(rng.choice(ids)) for _ in range(6000)]
    batches = [{"readings": [valid(rng.choice(ids)) for _ in range(100)]} for _ in range(30)]
    bad = bad_messages(rng, 1000)
    messages: list[tuple[bytes | None, bytes | None]] = [
        (str(r["device_id"]).encode(), orjson.dumps(r)) for r in singles
    ]
    messages += [(str(b["readings"][0]["device_id"]).encode(), orjson.dumps(b)) for b in batches]  # type: ignore[index]
    messages += [(key, value) for key, value, _ in bad]
    rng.shuffle(messages)
    await produce_messages(settings.broker, settings.topic_prefix + TELEMETRY_RAW, messages)

    enriched = await consume_records(
        settings.broker, settings.topic_prefix + TELEMETRY_ENRICHED, 9000, timeout=120, settle=2
    )
    dead = await consume_records(
        settings.broker, settings.topic_prefix + DEADLETTER, 1000, timeout=60, settle=1
    )
    log = (tmp_path / "worker.log").read_text()
    assert worker.poll() is None, log

    got = [orjson.loads(r.value) for r in enriched]
    assert len(got) == 9000, (len(got), len(dead), log[-2000:])
    assert {(g["device_id"], g["seq"]) for g in got} == {
        (d, s) for d, n in seqs.items() for s in range(1, n + 1)
    }
    kinds = {str(d["device_id"]): d["kind"] for d in fleet}
    assert all(g["kind"] == kinds[g["device_id"]] and g["district"] for g in got)

    expected = {key.decode(): reason for key, _, reason in bad}
    reasons = {r.key.decode(): orjson.loads(r.value)["reason"] for r in dead if r.key}
    assert len(dead) == 1000
    assert reasons == expected


async def test_registry_update_and_tombstone(
    settings: Settings, worker: subprocess.Popen[bytes]
) -> None:
    device = {
        "device_id": "dui-sued-aq1",
        "kind": "air_quality",
        "district": "Süd",
        "site": "aq-sued-1",
        "lat": 51.36,
        "lon": 6.76,
        "heartbeat_s": 60,
    }
    devices_topic = settings.topic_prefix + DEVICES
    raw_topic = settings.topic_prefix + TELEMETRY_RAW
    enriched_topic = settings.topic_prefix + TELEMETRY_ENRICHED
    seq = 0

    async def outcome() -> tuple[str, str]:
        """Send one reading; return (topic it came out on, district or reason)."""
        nonlocal seq
        seq += 1
        reading = {
            "device_id": "dui-sued-aq1",
            "ts": now_ms(),
            "seq": seq,
            "metrics": {"no2_ugm3": 30},
        }
        await produce_messages(
            settings.broker, raw_topic, [(b"dui-sued-aq1", orjson.dumps(reading))]
        )
        for _ in range(60):
            for topic in (enriched_topic, settings.topic_prefix + DEADLETTER):
                for r in await consume_records(settings.broker, topic, 10**6, timeout=0.5):
                    doc = orjson.loads(r.value)
                    payload = (
                        doc
                        if topic == enriched_topic
                        else orjson.loads(__import__("base64").b64decode(doc["payload_b64"]))
                    )
                    if payload.get("seq") == seq:
                        return topic, doc.get("district") or doc["reason"]
        raise AssertionError(f"reading {seq} never came out")

    async def until(expected: tuple[str, str]) -> None:
        # The registry and the telemetry are separate streams: a change may take a moment.
        for _ in range(20):
            if await outcome() == expected:
                return
            await asyncio.sleep(0.5)
        raise AssertionError(f"never saw {expected}")

    await produce_messages(
        settings.broker, devices_topic, [(b"dui-sued-aq1", orjson.dumps(device))]
    )
    await until((enriched_topic, "Süd"))
    await produce_messages(
        settings.broker,
        devices_topic,
        [(b"dui-sued-aq1", orjson.dumps(device | {"district": "Mitte"}))],
    )
    await until((enriched_topic, "Mitte"))
    await produce_messages(settings.broker, devices_topic, [(b"dui-sued-aq1", None)])
    await until((settings.topic_prefix + DEADLETTER, "unknown_device"))
    assert worker.poll() is None
