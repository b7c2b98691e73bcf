"""The fault battery's moving parts around a real broker: a load generator that keeps a
ledger of what the broker acknowledged, worker processes to kill and restart, a
monitor of when each partition was last processed, and the outputs read back whole."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import signal
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams.settings import Settings
from streams.tools.fleet import generate_fleet
from streams.topics import ALERTS, DEADLETTER, METRICS_DEVICE, METRICS_DISTRICT, TELEMETRY_ENRICHED
from tests.conftest import spawn
from tests.faults.audit import Reading

log = logging.getLogger(__name__)

DEVICES = 500
RATE = 300.0  # readings/s
WINDOW_S, DISTRICT_S = 10, 30

# One simple rule, so that episodes come from the data alone (no schedule, no
# occupancy), and no offline detection: a killed worker must not page anyone.
RULES = """
[offline]
enabled = false

[[rule]]
name = "co2_high"
kind = "classroom_air"
metric = "co2_ppm"
condition = "above"
threshold = 1500.0
clear = 1200.0
severity = "warning"
summary = "CO2 {value:.0f} ppm in {site}"
"""


def fleet(n: int = DEVICES) -> list[dict[str, Any]]:
    """``n`` classrooms over every district, without parents or heartbeats."""
    rooms = [d for d in generate_fleet(seed=5, scale=1.0) if d["kind"] == "classroom_air"]
    step = len(rooms) / n
    chosen = [rooms[int(i * step)] for i in range(n)] if n <= len(rooms) else []
    if len(chosen) < n:  # more than the city has: numbered copies
        chosen = [
            {**rooms[i % len(rooms)], "device_id": f"{rooms[i % len(rooms)]['device_id']}-{i}"}
            for i in range(n)
        ]
    return [{k: v for k, v in d.items() if k not in ("parent", "heartbeat_s")} for d in chosen]


def steady_values(index: int, seq: int) -> dict[str, float]:
    """Deterministic values; every tenth room goes above the CO2 threshold for 30
    readings in 60 (one episode a cycle)."""
    if index % 10 == 0 and (seq // 30) % 2 == 1:
        co2 = 1600.0 + seq % 7
    else:
        co2 = 600.0 + (index * 37 + seq * 13) % 400
    return {"co2_ppm": co2, "temperature_c": 19.0 + ((index + seq) % 50) / 10}


def flapping_values(index: int, seq: int) -> dict[str, float]:
    """Values that cross the threshold and the clear level again and again."""
    co2 = (1550.0, 1300.0, 1100.0, 1600.0, 1250.0, 1000.0)[(seq + index) % 6]
    return {"co2_ppm": co2 + index % 3, "temperature_c": 21.0}


def battery_settings(base: Settings, **overrides: Any) -> Settings:
    return replace(
        base,
        partitions=6,
        window_s=WINDOW_S,
        district_window_s=DISTRICT_S,
        grace_s=2.0,
        window_idle_s=5.0,
        # Longer than any outage of the battery: a device window delayed by a crash is
        # still in time for its district window.
        district_wait_s=45.0,
        state_flush_ms=500,
        **overrides,
    )


@dataclass
class Load:
    """An open-loop generator: reading n is due at start + n / rate, whatever happens
    downstream. The ledger holds each reading once the broker acknowledged it; one the
    producer gave up on is sent again (same seq: the pipeline must drop the repeat)."""

    broker: str
    topic: str
    devices: list[dict[str, Any]]
    rate: float = RATE
    values: Callable[[int, int], dict[str, float]] = steady_values
    duplicates: float = 0.0  # share of readings sent twice on purpose
    ledger: list[Reading] = field(default_factory=list)
    sent: int = 0
    resent: int = 0
    repeats: int = 0  # readings sent twice on purpose
    repeated: set[tuple[str, int]] = field(default_factory=set)  # ... their (device, seq)
    failures: int = 0
    behind_s: float = 0.0  # how far the generator fell behind its schedule, at worst
    seqs: dict[int, int] = field(default_factory=dict)  # per device index, the last seq
    _retry: list[tuple[bytes, bytes, Reading]] = field(default_factory=list)
    _outstanding: int = 0
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _running: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._running.set()

    def stop(self) -> None:
        self._stop.set()

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    async def run(self, duration: float) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.broker,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            # A broker down for a while: keep the batches and retry, don't fail them.
            request_timeout_ms=120_000,
            retry_backoff_ms=200,
        )
        await producer.start()
        loop = asyncio.get_running_loop()
        try:
            start = loop.time()
            n = 0
            while not self._stop.is_set() and loop.time() - start < duration:
                if not self._running.is_set():
                    paused = loop.time()
                    await self._running.wait()
                    start += loop.time() - paused  # the schedule (and duration) resume
                due = start + n / self.rate
                now = loop.time()
                if due > now:
                    await asyncio.sleep(due - now)
                else:
                    self.behind_s = max(self.behind_s, now - due)
                await self._resend_failed(producer)
                index = n % len(self.devices)
                seq = self.seqs[index] = self.seqs.get(index, 0) + 1
                device_id = str(self.devices[index]["device_id"])
                reading = Reading(
                    device_id, seq, time.time_ns() // 1_000_000, self.values(index, seq)
                )
                value = orjson.dumps(
                    {
                        "device_id": device_id,
                        "ts": reading.ts,
                        "seq": reading.seq,
                        "metrics": reading.metrics,
                    }
                )
                key = device_id.encode()
                await self._send(producer, key, value, reading)
                if self.duplicates and (n * 7919) % 1000 < self.duplicates * 1000:
                    # a device re-sending after a lost ack: same bytes, not in the ledger twice
                    await producer.send(self.topic, value, key=key)
                    self.sent += 1
                    self.repeats += 1
                    self.repeated.add((device_id, seq))
                n += 1
            # Until every reading is acknowledged: counted by the callbacks themselves
            # (a future can be done before its callback has queued a retry).
            while self._outstanding or self._retry:
                await self._resend_failed(producer)
                await asyncio.sleep(0.05)
        finally:
            await producer.stop()

    async def _resend_failed(self, producer: AIOKafkaProducer) -> None:
        while self._retry:
            key, value, reading = self._retry.pop()
            self.resent += 1
            await self._send(producer, key, value, reading)

    async def _send(
        self, producer: AIOKafkaProducer, key: bytes, value: bytes, reading: Reading
    ) -> None:
        future = await producer.send(self.topic, value, key=key)
        self.sent += 1
        self._outstanding += 1

        def done(f: asyncio.Future[Any]) -> None:
            self._outstanding -= 1
            if f.cancelled() or f.exception() is not None:
                self.failures += 1
                self._retry.append((key, value, reading))
            else:
                self.ledger.append(reading)

        future.add_done_callback(done)


class Workers:
    """Worker processes, each with its own state directory, killed and restarted."""

    def __init__(self, settings: Settings, folder: Path, count: int = 2) -> None:
        self.settings = settings
        self.folder = folder
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * count
        self.starts = [0] * count
        self.peak_rss: list[int] = [0] * count
        self.unexpected_exits: list[str] = []

    def settings_of(self, i: int) -> Settings:
        # Each its own state and instance id (exactly-once: its transactional id).
        return replace(
            self.settings, state_dir=self.folder / f"worker{i}", instance_id=f"worker{i}"
        )

    def log_of(self, i: int) -> Path:
        return self.folder / f"worker{i}-{self.starts[i]}.log"

    def start(self, i: int) -> None:
        self.starts[i] += 1
        self.procs[i] = spawn(self.settings_of(i), "streams", "worker", log=self.log_of(i))

    def start_all(self) -> None:
        for i in range(len(self.procs)):
            self.start(i)

    def signal(self, i: int, sig: signal.Signals, wait: float = 60.0) -> None:
        proc = self.procs[i]
        assert proc is not None
        self.check()
        proc.send_signal(sig)
        proc.wait(wait)
        self.procs[i] = None

    def check(self) -> None:
        """Record workers that exited without being told to (a crash)."""
        for i, proc in enumerate(self.procs):
            if proc is not None and proc.poll() is not None:
                tail = self.log_of(i).read_text(errors="replace")[-2000:]
                self.unexpected_exits.append(f"worker {i} exited {proc.returncode}: {tail}")
                self.procs[i] = None

    def rss(self) -> list[int]:
        """Resident set size (bytes) of each running worker; also tracks the peaks."""
        out = []
        for i, proc in enumerate(self.procs):
            rss = _rss(proc.pid) if proc is not None else 0
            self.peak_rss[i] = max(self.peak_rss[i], rss)
            out.append(rss)
        return out

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                proc.terminate()
        for i, proc in enumerate(self.procs):
            if proc is not None:
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                self.procs[i] = None

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}"
            for p in sorted(self.folder.glob("worker*.log"))
        )


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Monitor:
    """Follows telemetry.enriched and notes, per partition, when each reading was
    processed: how long a partition went unprocessed after a fault is read from it."""

    def __init__(self, broker: str, topic: str) -> None:
        self.broker = broker
        self.topic = topic
        # partition -> [(wall time of arrival here, the reading's event time in s)]
        self.arrivals: dict[int, list[tuple[float, float]]] = defaultdict(list)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        consumer = AIOKafkaConsumer(
            self.topic,
            bootstrap_servers=self.broker,
            group_id=None,
            auto_offset_reset="latest",
            isolation_level="read_committed",  # what a downstream consumer sees
        )
        await consumer.start()
        try:
            while True:
                batch = await consumer.getmany(timeout_ms=200)
                now = time.time()
                for tp, records in batch.items():
                    for r in records:
                        if r.value is not None:
                            ts = orjson.loads(r.value)["ts"] / 1000  # when it was sent
                            self.arrivals[tp.partition].append((now, ts))
        finally:
            await consumer.stop()

    def recovery_s(self, fault_at: float) -> float:
        """The longest any partition waited, after ``fault_at``, to have a reading sent
        after ``fault_at`` processed: how long the fault stopped processing."""
        worst = 0.0
        for arrivals in self.arrivals.values():
            later = [at for at, sent in arrivals if sent >= fault_at]
            worst = max(worst, (min(later) - fault_at) if later else float("inf"))
        return worst

    def latency_ms(self) -> tuple[float, float]:
        """p50 and p99 from a reading's send to its enriched record being readable."""
        lags = sorted(at - sent for arrivals in self.arrivals.values() for at, sent in arrivals)
        if not lags:
            return (float("nan"), float("nan"))
        return (lags[len(lags) // 2] * 1000, lags[int(len(lags) * 0.99)] * 1000)

    def longest_stall_s(self, start: float, end: float) -> float:
        """The longest gap between two processed readings of a partition in [start, end]."""
        worst = 0.0
        for arrivals in self.arrivals.values():
            times = sorted(at for at, _ in arrivals if start <= at <= end)
            for a, b in itertools.pairwise(times):
                worst = max(worst, b - a)
        return worst


async def read_topic(
    broker: str, topic: str, isolation_level: str = "read_committed"
) -> list[dict[str, Any]]:
    """Every record of ``topic`` up to its current end, decoded."""
    return [orjson.loads(v) for _, v in await read_raw(broker, topic, isolation_level) if v]


async def read_raw(
    broker: str, topic: str, isolation_level: str = "read_committed"
) -> list[tuple[bytes | None, bytes | None]]:
    """Every record of ``topic`` up to its current end, as (key, value)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=broker,
        group_id=None,
        enable_auto_commit=False,
        isolation_level=isolation_level,
        max_partition_fetch_bytes=4 * 2**20,
    )
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic)
        while parts is None:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic)
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        out: list[tuple[bytes | None, bytes | None]] = []
        while [tp for tp in tps if await consumer.position(tp) < end[tp]]:
            batch = await consumer.getmany(timeout_ms=500, max_records=20_000)
            for records in batch.values():
                out += [(r.key, r.value) for r in records]
        return out
    finally:
        await consumer.stop()


async def read_outputs(broker: str, prefix: str) -> dict[str, list[dict[str, Any]]]:
    names = {
        "enriched": TELEMETRY_ENRICHED,
        "device": METRICS_DEVICE,
        "district": METRICS_DISTRICT,
        "alerts": ALERTS,
        "deadletter": DEADLETTER,
    }
    return {k: await read_topic(broker, prefix + t) for k, t in names.items()}


async def wait_for_outputs(
    broker: str, prefix: str, wanted: dict[str, int], timeout: float
) -> None:
    """Until each topic holds at least its count of records (or ``timeout``): counts
    include repeats, the audit tells them apart."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = [await _count(broker, prefix + topic) for topic in wanted]
        if all(n >= want for n, want in zip(counts, wanted.values(), strict=True)):
            return
        await asyncio.sleep(2.0)


async def _count(broker: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=broker, isolation_level="read_committed")
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in parts]
        await asyncio.sleep(0)  # (stopping a consumer before its tasks ran raises, aiokafka)
        if not tps:
            return 0
        end = await consumer.end_offsets(tps)
        start = await consumer.beginning_offsets(tps)
        return sum(end[tp] - start[tp] for tp in tps)
    finally:
        await consumer.stop()
