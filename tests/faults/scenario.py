"""One scenario of the battery: registry, workers, a steady load with a fault injected
while it runs, the drain, the audit, and a line of figures."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from streams.kafka.admin import ensure_topics
from streams.settings import Settings
from streams.stages.rules import load_rules
from streams.tools.publish import device_messages
from streams.topics import DEVICES as DEVICES_TOPIC
from streams.topics import METRICS_DEVICE, METRICS_DISTRICT, TELEMETRY_ENRICHED, TELEMETRY_RAW
from tests.faults.audit import (
    Audit,
    Reading,
    audit,
    district_keys,
    expected_device_windows,
)
from tests.faults.harness import (
    DISTRICT_S,
    RULES,
    WINDOW_S,
    Load,
    Monitor,
    Workers,
    battery_settings,
    fleet,
    read_outputs,
    steady_values,
    wait_for_outputs,
)
from tests.faults.proxy import Proxy
from tests.kafkautil import produce_messages

log = logging.getLogger(__name__)

FIGURES: list[str] = []  # one line per scenario, printed at the end of the session


@dataclass
class Run:
    """What a fault function can reach while the load runs."""

    settings: Settings
    workers: Workers
    monitor: Monitor
    load: Load
    proxy: Proxy | None = None
    faults_at: list[float] = field(default_factory=list)  # wall times of the faults
    recoveries: list[float] = field(default_factory=list)  # seconds, per fault
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass
class Result:
    name: str
    audit: Audit
    run: Run
    rss_start: list[int]
    rss_end: list[int]
    outputs: dict[str, list[dict[str, Any]]]

    @property
    def recovery_s(self) -> float:
        return max(self.run.recoveries, default=0.0)

    def figures(self) -> str:
        a = self.audit
        lost = a.readings.lost + a.device_windows.lost + a.district_windows.lost + a.alerts.lost
        wrong = (
            a.readings.wrong + a.device_windows.wrong + a.district_windows.wrong + a.alerts.wrong
        )
        dc = a.device_windows.double_counted + a.district_windows.double_counted
        rss = ", ".join(
            f"{s / 2**20:.0f}->{e / 2**20:.0f} MB"
            for s, e in zip(self.rss_start, self.rss_end, strict=True)
        )
        extra = "".join(f", {k} {v}" for k, v in self.run.notes.items())
        p50, p99 = self.run.monitor.latency_ms()
        return (
            f"{self.name}: readings {a.readings.expected}, lost {lost}, double-counted {dc}, "
            f"wrong {wrong}, duplicated outputs {a.duplicated} "
            f"(windows {a.device_windows.duplicated}+{a.district_windows.duplicated}, "
            f"alerts {a.alerts.duplicated}, enriched {a.readings.duplicated}), "
            f"episodes {sum(1 for e in self.outputs['alerts'] if e['status'] == 'firing')}, "
            f"recovery {', '.join(f'{r:.1f}' for r in self.run.recoveries) or '-'} s, "
            f"latency p50 {p50:.0f} ms p99 {p99:.0f} ms, RSS {rss}{extra}"
        )


Fault = Callable[[Run], Awaitable[None]]


async def run_scenario(
    name: str,
    broker: str,
    folder: Path,
    *,
    duration: float,
    fault: Fault | None = None,
    values: Callable[[int, int], dict[str, float]] = steady_values,
    duplicates: float = 0.0,
    workers: int = 2,
    worker_broker: str | None = None,
    proxy: Proxy | None = None,
    devices: int = 500,
    rate: float = 300.0,
    overrides: dict[str, Any] | None = None,
) -> Result:
    tag = uuid.uuid4().hex[:6]
    rules = folder / "rules.toml"
    rules.write_text(RULES)
    base = Settings.from_env(
        {},
        broker=broker,
        topic_prefix=f"f{tag}.",
        app_id=f"battery-{tag}",
        state_dir=folder / "state",
        metrics_port=0,
        log_level="info",
        rules=str(rules),
    )
    settings = battery_settings(base, **(overrides or {}))
    prefix = settings.topic_prefix
    the_fleet = fleet(devices)
    await ensure_topics(settings)
    await produce_messages(broker, prefix + DEVICES_TOPIC, device_messages(the_fleet))

    pool = Workers(replace(settings, broker=worker_broker or broker), folder, workers)
    monitor = Monitor(broker, prefix + TELEMETRY_ENRICHED)
    load = Load(broker, prefix + TELEMETRY_RAW, the_fleet, rate, values, duplicates)
    run = Run(settings, pool, monitor, load, proxy)
    monitor.start()
    pool.start_all()
    try:
        await _wait_processing(monitor, load, pool, 90)
        sampler = asyncio.ensure_future(_sample(pool))
        load_task = asyncio.ensure_future(load.run(duration))
        # Memory is compared from a baseline after warming up (state for every device,
        # open windows, caches), 20% into the load, at most a minute in.
        baseline = asyncio.ensure_future(_after(min(60.0, duration * 0.2), pool.rss))
        if fault is not None:
            await fault(run)
        await load_task
        await _trailing(load, the_fleet, values)
        ledger = load.ledger
        normal = [r for r in ledger if r.seq < TRAILING_SEQ]
        want_devices = expected_device_windows(normal, WINDOW_S * 1000)
        want_districts = district_keys(want_devices, the_fleet, DISTRICT_S * 1000)
        await wait_for_outputs(
            broker,
            prefix,
            {
                TELEMETRY_ENRICHED: len(ledger),
                METRICS_DEVICE: len(want_devices),
                METRICS_DISTRICT: len(want_districts),
            },
            timeout=120,
        )
        await asyncio.sleep(3)  # what should not be there has time to show
        sampler.cancel()
        pool.check()
        rss_start = await baseline
        rss_end = pool.rss()
        outputs = await read_outputs(broker, prefix)
    finally:
        await monitor.stop()
        pool.stop_all()
    # The trailing readings' own windows stay open: only the normal load is audited
    # for windows (alerts and readings include the trailing ones).
    boundary = _district_boundary(normal)
    outputs["device"] = [w for w in outputs["device"] if w["window_start"] < boundary]
    outputs["district"] = [w for w in outputs["district"] if w["window_start"] < boundary]
    result = Result(
        name,
        audit(
            ledger,
            the_fleet,
            load_rules(rules),
            WINDOW_S * 1000,
            DISTRICT_S * 1000,
            outputs,
            window_ledger=normal,
            repeated=load.repeated,
        ),
        run,
        rss_start,
        rss_end,
        outputs,
    )
    line = result.figures()
    FIGURES.append(line)
    log.warning("%s", line)
    print(line)
    if pool.unexpected_exits:
        raise AssertionError("\n".join(pool.unexpected_exits))
    if not result.audit.clean:
        raise AssertionError(f"{name}:\n{result.audit.summary()}\n{pool.logs()}")
    return result


TRAILING_SEQ = 10**9


def _district_boundary(ledger: list[Reading]) -> int:
    """The start of the first district window after the load (trailing readings only)."""
    last = max(r.ts for r in ledger)
    size = DISTRICT_S * 1000
    return last - last % size + size


async def _trailing(
    load: Load, devices: list[dict[str, Any]], values: Callable[[int, int], dict[str, float]]
) -> None:
    """Two readings per device after the load, in the next district window and a window
    later: every window of the load then closes on its device's watermark, and every
    district window on all its devices having moved past it, at once (no waiting for
    idle or district timeouts)."""
    boundary = _district_boundary(load.ledger)
    t1 = boundary + 1_000
    t2 = t1 + WINDOW_S * 1000 + 3_000
    producer = AIOKafkaProducer(bootstrap_servers=load.broker, acks="all", linger_ms=20)
    await producer.start()
    try:
        futures = []
        for seq, ts in ((TRAILING_SEQ, t1), (TRAILING_SEQ + 1, t2)):
            for i, d in enumerate(devices):
                device_id = str(d["device_id"])
                reading = Reading(device_id, seq, ts, {"co2_ppm": 500.0 + i % 5})
                value = orjson.dumps(
                    {"device_id": device_id, "ts": ts, "seq": seq, "metrics": reading.metrics}
                )
                futures.append(
                    (reading, await producer.send(load.topic, value, device_id.encode()))
                )
            for reading, f in futures:
                await f
                load.ledger.append(reading)
            futures.clear()
    finally:
        await producer.stop()


async def _wait_processing(monitor: Monitor, load: Load, pool: Workers, timeout: float) -> None:
    """Warm up: a trickle of load until the workers process something."""
    deadline = time.monotonic() + timeout
    warmup = asyncio.ensure_future(load.run(timeout))
    try:
        while time.monotonic() < deadline:
            if sum(len(a) for a in monitor.arrivals.values()) >= 50 and _settled(pool):
                return
            pool.check()
            if pool.unexpected_exits:
                raise AssertionError("\n".join(pool.unexpected_exits))
            await asyncio.sleep(0.5)
        raise AssertionError("the workers processed nothing within the warm-up")
    finally:
        load.stop()
        await warmup
        load._stop.clear()


def _settled(pool: Workers) -> bool:
    """Every running worker has loaded the state of an assignment, and together they
    own all six device partitions: the group is stable before the fault starts."""
    owned: list[int] = []
    for i, proc in enumerate(pool.procs):
        if proc is None:
            continue
        log_file = pool.log_of(i)
        lines = (
            [
                line
                for line in log_file.read_text(errors="replace").splitlines()
                if "state loaded in" in line
            ]
            if log_file.exists()
            else []
        )
        if not lines:
            return False
        m = re.search(r"devices \(partitions \[([\d, ]*)\]", lines[-1])
        if m is None or not m[1].strip():
            return False
        owned += [int(p) for p in m[1].split(",")]
    return sorted(owned) == list(range(6))


async def _after(delay: float, what: Callable[[], list[int]]) -> list[int]:
    await asyncio.sleep(delay)
    return what()


async def _sample(pool: Workers) -> None:
    while True:
        pool.rss()
        await asyncio.sleep(5)


async def wait_recovered(run: Run, fault_at: float, timeout: float = 90.0) -> float:
    """Seconds until every partition processed a reading sent after ``fault_at``."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        r = run.monitor.recovery_s(fault_at)
        if r != float("inf"):
            return r
        await asyncio.sleep(0.5)
    return float("inf")
