"""The fault battery: 300 readings/s from 500 devices, 6 partitions, 2 workers, on a real
broker; each scenario injects its fault while the load runs, then an independent
auditor (tests/faults/audit.py) recomputes every output from the producer's ledger and
counts what was lost, double-counted, wrong or duplicated.

``FAULTS_SCALE`` (default 1) shortens or lengthens the scenarios for local runs.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import shutil
import signal
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from streams.runtime.rebalance import state_digest
from streams.stages.validate import Limits, parse_message
from streams.topics import STATE_DEVICE, topic_name
from tests.faults.conftest import BatteryKafka, start_battery_kafka
from tests.faults.harness import flapping_values, read_raw
from tests.faults.proxy import Proxy
from tests.faults.scenario import FIGURES, TRAILING_SEQ, Run, run_scenario, wait_recovered

pytestmark = [pytest.mark.kafka, pytest.mark.faults, pytest.mark.timeout(900)]

SCALE = float(os.environ.get("FAULTS_SCALE", "1"))


def seconds(s: float, floor: float = 0.0) -> float:
    """``s`` scaled, but never below ``floor``: what a bound depends on (a kill interval
    longer than the group session, a load that outlasts the fault) does not scale."""
    return max(s * SCALE, floor)


async def test_soak_without_faults(battery_kafka: BatteryKafka, tmp_path: Path) -> None:
    """1. Five minutes, no fault: nothing lost or duplicated, memory flat."""
    result = await run_scenario("1 soak", battery_kafka.bootstrap, tmp_path, duration=seconds(300))
    assert result.audit.duplicated == 0
    for start, end in zip(result.rss_start, result.rss_end, strict=True):
        assert end < start * 1.10, f"RSS grew from {start} to {end}"


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_kill_a_worker_every_30_s(
    battery_kafka: BatteryKafka, tmp_path: Path, guarantee: str
) -> None:
    """2. kill -9 a worker every 30 s, five times (the two in turn), restarting it.
    Exactly-once: not even an identical repeat reaches a read_committed consumer."""

    async def kills(run: Run) -> None:
        measuring = []
        for i in range(5):
            # (Kills closer than the 10 s group session plus the 20 s bound overlap.)
            await asyncio.sleep(seconds(30, floor=25))
            at = time.time()
            run.workers.signal(i % 2, signal.SIGKILL)
            run.workers.start(i % 2)
            measuring.append(asyncio.ensure_future(wait_recovered(run, at)))
        run.recoveries += await asyncio.gather(*measuring)

    result = await run_scenario(
        f"2 kill -9 ({guarantee})",
        battery_kafka.bootstrap,
        tmp_path,
        duration=seconds(180, floor=5 * 25 + 30),
        fault=kills,
        overrides={"processing_guarantee": guarantee},
    )
    assert len(result.run.recoveries) == 5
    if guarantee == "exactly_once":
        assert result.audit.duplicated == 0
    assert result.recovery_s < 20, result.run.recoveries


async def test_rolling_restarts(battery_kafka: BatteryKafka, tmp_path: Path) -> None:
    """3. SIGTERM one worker or the other every 5-15 s for 3 minutes."""
    rng = random.Random(3)

    async def rolling(run: Run) -> None:
        started = time.time()
        i = 0
        while time.time() - started < seconds(180):
            await asyncio.sleep(rng.uniform(5, 15))
            run.workers.signal(i % 2, signal.SIGTERM)
            run.workers.start(i % 2)
            i += 1
        run.notes["restarts"] = i
        run.notes["longest stall s"] = round(run.monitor.longest_stall_s(started, time.time()), 1)
        run.recoveries.append(await wait_recovered(run, time.time()))

    result = await run_scenario(
        "3 rolling", battery_kafka.bootstrap, tmp_path, duration=seconds(190), fault=rolling
    )
    assert result.run.notes["longest stall s"] < 30


async def test_duplicates_and_flapping(battery_kafka: BatteryKafka, tmp_path: Path) -> None:
    """7. 10% of readings sent twice, values flapping around the alert threshold."""
    result = await run_scenario(
        "7 duplicates+flapping",
        battery_kafka.bootstrap,
        tmp_path,
        duration=seconds(60),
        values=flapping_values,
        duplicates=0.10,
    )
    firing = [e for e in result.outputs["alerts"] if e["status"] == "firing"]
    assert len(firing) > 100  # the values really flap
    # Of the readings the load sent at random: the trailing ones are never sent twice.
    normal = [r for r in result.run.load.ledger if r.seq < TRAILING_SEQ]
    assert result.run.load.repeats > len(normal) * 0.09


async def test_broker_killed_and_restarted(
    tmp_path_factory: pytest.TempPathFactory, kafka_cache: Path, tmp_path: Path
) -> None:
    """4. kill -9 the broker, restart it 20 s later (its own broker: the others go on)."""
    battery = start_battery_kafka(tmp_path_factory.mktemp("killed-kafka"), kafka_cache)

    async def kill_broker(run: Run) -> None:
        await asyncio.sleep(seconds(30))
        pid = battery.kafka.status().pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(20)
        await asyncio.to_thread(battery.kafka.start)
        back = time.time()
        run.recoveries.append(await wait_recovered(run, back))

    try:
        result = await run_scenario(
            "4 broker kill -9",
            battery.bootstrap,
            tmp_path,
            duration=seconds(100, floor=seconds(30) + 20 + 40),  # load outlasts the outage
            fault=kill_broker,
        )
    finally:
        battery.kafka.stop()
    assert result.recovery_s < 30, result.run.recoveries


async def test_slow_blocked_and_cut_network(battery_kafka: BatteryKafka, tmp_path: Path) -> None:
    """5. Workers reach the broker through a proxy: slow (200 ms a chunk), then blocked
    (connections open, nothing moves), then cut (reset, refused), then healed."""
    proxy = Proxy(battery_kafka.proxied_port, battery_kafka.proxy_port)
    proxy.start()

    async def network(run: Run) -> None:
        await asyncio.sleep(seconds(20))
        proxy.slow(0.2)
        await asyncio.sleep(seconds(20))
        proxy.block()
        await asyncio.sleep(seconds(15))
        proxy.cut()
        await asyncio.sleep(seconds(15))
        proxy.heal()
        healed = time.time()
        run.recoveries.append(await wait_recovered(run, healed))

    try:
        result = await run_scenario(
            "5 network",
            battery_kafka.bootstrap,
            tmp_path,
            duration=seconds(100, floor=seconds(70) + 30),  # load outlasts the faults
            fault=network,
            worker_broker=battery_kafka.via_proxy,
            proxy=proxy,
        )
    finally:
        proxy.stop()
    assert result.recovery_s < 30, result.run.recoveries


def hostile(now: int) -> list[tuple[str, bytes]]:
    """The hostile cases, with the dead-letter reason each must get."""
    env = b'{"device_id":"dui-x","ts":%d,"metrics":{"v":' % now
    return [
        ("too_large", b'{"device_id":"a","metrics":{"x":"' + b"a" * 900_000 + b'"}}'),
        ("too_large", b"[" * 100_000 + b"]" * 100_000),  # nesting depth 100,000
        ("invalid_json", b"[" * 20_000 + b"]" * 20_000),  # deep, and under the size limit
        ("too_large", env + b"9" * 1_000_000 + b"}}"),  # a 1,000,000-digit integer
        ("invalid_json", env + b"9" * 50_000 + b"}}"),
        ("invalid_json", env + b"NaN}}"),
        ("schema", env + b"1e308}}"),
        ("schema", orjson.dumps({"device_id": "d" * 10_000, "ts": now, "metrics": {"v": 1}})),
        ("schema", orjson.dumps({"device_id": "dui-\u202eevil", "ts": now, "metrics": {"v": 1}})),
        ("schema", orjson.dumps({"device_id": "dui-\x00\x1b[31m", "ts": now, "metrics": {"v": 1}})),
        ("schema", orjson.dumps({"device_id": "dui-x", "ts": now, "metrics": {"v\u202e": 1}})),
        ("invalid_utf8", b'{"device_id":"dui-\xff","ts":1,"metrics":{"v":1}}'),
    ]


def malformed(i: int, now: int) -> tuple[str, bytes]:
    """The i-th of the ordinary malformed messages, with its reason."""
    rng = random.Random(i)
    valid = {"device_id": "dui-x", "ts": now, "seq": i, "metrics": {"co2_ppm": 700.0}}
    match i % 8:
        case 0:
            cut = orjson.dumps(valid)
            return "invalid_json", cut[: rng.randrange(1, len(cut) - 1)]
        case 1:
            return "schema", orjson.dumps({**valid, "ts": "yesterday"})
        case 2:
            return "schema", orjson.dumps({k: v for k, v in valid.items() if k != "metrics"})
        case 3:
            return "schema", orjson.dumps({**valid, "metrics": {"co2_ppm": "high"}})
        case 4:
            return "ts_future", orjson.dumps({**valid, "ts": now + 3_600_000})
        case 5:
            return "unknown_device", orjson.dumps({**valid, "device_id": f"dui-nobody-{i}"})
        case 6:
            return "schema", orjson.dumps([valid])
        case _:
            return "schema", orjson.dumps({**valid, "seq": -rng.randrange(1, 99)})


async def test_poison_input(battery_kafka: BatteryKafka, tmp_path: Path) -> None:
    """6. 1,000 malformed and the hostile cases among 10,000 valid readings."""
    wanted: Counter[str] = Counter()
    payloads: list[bytes] = []

    async def poison(run: Run) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=battery_kafka.bootstrap, acks="all", max_request_size=2**21
        )
        await producer.start()
        try:
            await asyncio.sleep(2)
            for i in range(1000):
                now = time.time_ns() // 1_000_000
                cases = [malformed(i, now)] + (hostile(now) if i % 100 == 50 and i < 100 else [])
                for reason, value in cases:
                    await (await producer.send(run.load.topic, value))
                    wanted[reason] += 1
                    payloads.append(value)
                await asyncio.sleep(0.025)
        finally:
            await producer.stop()

    result = await run_scenario(
        "6 poison",
        battery_kafka.bootstrap,
        tmp_path,
        duration=10_000 / 300,
        fault=poison,
    )
    # One dead letter per bad message, keyed like its source (a repeat after a
    # rebalance is at-least-once, identical, and de-duplicated on that key downstream).
    letters = {(d["partition"], d["offset"], d["index"]): d for d in result.outputs["deadletter"]}
    got = Counter(d["reason"] for d in letters.values())
    repeats = len(result.outputs["deadletter"]) - len(letters)
    FIGURES.append(f"6 poison: dead letters {dict(sorted(got.items()))}, repeated {repeats}")
    assert got == wanted
    assert sum(wanted.values()) == 1000 + len(hostile(0))
    # Validation cost of every payload, valid and bad, measured in this process.
    limits = Limits(max_bytes=65_536, max_future_ms=300_000, max_past_ms=86_400_000)
    valid = [
        orjson.dumps({"device_id": r.device_id, "ts": r.ts, "metrics": r.metrics})
        for r in result.run.load.ledger[:10_000]
    ]
    costs = []
    for value in payloads + valid:
        t = time.perf_counter()
        parse_message(value, time.time_ns() // 1_000_000, limits)
        costs.append(time.perf_counter() - t)
    costs.sort()
    p99 = costs[int(len(costs) * 0.99)]
    worst = costs[-1]
    FIGURES.append(f"6 poison: validation p99 {p99 * 1e3:.3f} ms, worst {worst * 1e3:.2f} ms")
    assert p99 < 0.005
    for start, end in zip(result.rss_start, result.rss_end, strict=True):
        assert end - start < 50 * 2**20


async def test_state_rebuilt_after_wiping_the_state_directory(
    battery_kafka: BatteryKafka, tmp_path: Path
) -> None:
    """8. 10,000 devices with state; the worker's state directory wiped, then kill -9:
    the state it rebuilds from the changelogs is the state it had."""

    async def wipe(run: Run) -> None:
        await asyncio.sleep(20)  # every device has sent twice (10,000 at 1,000/s): unscaled
        run.load.pause()
        await asyncio.sleep(8)  # idle windows closed, checkpoints written
        run.workers.signal(0, signal.SIGKILL)
        changelog = topic_name(run.settings.topic_prefix, STATE_DEVICE, run.settings.app_id)
        stored: dict[bytes, bytes] = {}
        for key, value in await read_raw(battery_kafka.bootstrap, changelog):
            assert key is not None
            if value is None:
                stored.pop(key, None)
            else:
                stored[key] = value
        shutil.rmtree(run.workers.settings_of(0).state_dir)
        started = time.time()
        run.workers.start(0)
        line = await wait_for_log(run.workers.log_of(0), "state loaded in", 90)
        loaded_s, devices, digest = parse_loaded(line)
        run.notes["devices before"] = len(stored)
        run.notes["devices restored"] = devices
        run.notes["restore s"] = loaded_s
        run.notes["start to restored s"] = round(time.time() - started, 1)
        run.notes["digest equal"] = digest == state_digest(stored)
        run.load.resume()
        run.recoveries.append(await wait_recovered(run, time.time()))

    result = await run_scenario(
        "8 state wiped",
        battery_kafka.bootstrap,
        tmp_path,
        duration=45,
        fault=wipe,
        workers=1,
        devices=10_000,
        rate=1000.0,
    )
    notes = result.run.notes
    assert notes["devices before"] == notes["devices restored"] == 10_000
    assert notes["digest equal"]
    assert notes["restore s"] < 30


async def wait_for_log(path: Path, text: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():  # noqa: ASYNC240 - a small log, read between sleeps
            for line in path.read_text(errors="replace").splitlines():  # noqa: ASYNC240
                if text in line:
                    return line
        await asyncio.sleep(0.2)
    raise AssertionError(f"{text!r} not in {path} within {timeout} s")


def parse_loaded(line: str) -> tuple[float, int, str]:
    """(seconds, devices, digest) of the worker's "state loaded" line."""
    m = re.search(
        r"state loaded in ([\d.]+) s: (\d+) devices \(partitions .*?, digest (\w+)\)", line
    )
    assert m is not None, line
    return float(m[1]), int(m[2]), m[3]
