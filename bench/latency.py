"""The latency run: readings at a constant rate into a running worker, and the time from
a reading's Kafka timestamp to the device-window aggregate it closed.

The generator is open-loop: reading ``k`` is due at ``start + k / rate`` and is sent
when due (late ones at once, in a burst), whatever the pipeline does, so a slow
pipeline shows up as latency, never as a slower generator. Each device's event time
advances ``STEP_MS`` per reading, so a device window (60 s, grace 10 s) closes every
third reading of a device: the first reading with ``ts >= window_end + grace`` closes
it, and the aggregate's Kafka timestamp (set when the worker hands it to the producer)
minus that reading's Kafka timestamp is one sample.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from streams.devices import KIND_METRICS

log = logging.getLogger("bench.latency")
STEP_MS = 20_000  # event time between a device's readings


def closing_ts(base: int, window_end: int, grace: int) -> int:
    """The event time of the reading that closes a window ending at ``window_end``,
    for a device whose readings are at ``base + k * STEP_MS``."""
    k = math.ceil((window_end + grace - base) / STEP_MS)
    return base + k * STEP_MS


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile (``q`` in 0..100) of ``values``."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(slots=True)
class LatencyResult:
    rate: float  # readings/s asked for
    sent: int
    achieved: float  # readings/s the generator managed
    samples: int
    p50_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float


def reading(device: dict[str, Any], ts: int, seq: int) -> bytes:
    names = KIND_METRICS[device["kind"]]
    return orjson.dumps(
        {
            "device_id": device["device_id"],
            "ts": ts,
            "seq": seq,
            "metrics": {m: float(100 + (seq * 7 + i) % 50) for i, m in enumerate(names)},
        }
    )


async def generate(
    broker: str,
    topic: str,
    devices: list[dict[str, Any]],
    base: int,
    rate: float,
    seconds: float,
) -> tuple[dict[tuple[str, int], int], float]:
    """Send ``rate * seconds`` readings on schedule; returns each reading's Kafka
    timestamp by (device, ts), and the rate achieved."""
    producer = AIOKafkaProducer(bootstrap_servers=broker, linger_ms=1)
    await producer.start()
    sent: dict[tuple[str, int], int] = {}
    total = int(rate * seconds)
    loop = asyncio.get_running_loop()
    try:
        start = loop.time()
        k = 0
        n = len(devices)
        while k < total:
            delay = start + k / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            now = loop.time()
            while k < total and start + k / rate <= now:
                device = devices[k % n]
                ts = base + (k // n) * STEP_MS
                stamp = time.time_ns() // 1_000_000
                await producer.send(
                    topic,
                    reading(device, ts, k // n + 1),
                    key=device["device_id"].encode(),
                    timestamp_ms=stamp,
                )
                sent[(device["device_id"], ts)] = stamp
                k += 1
        achieved = total / (loop.time() - start)
        await producer.flush()
    finally:
        await producer.stop()
    return sent, achieved


async def collect(
    broker: str, topic: str, stop: asyncio.Event, settle_s: float
) -> list[tuple[str, int, int]]:
    """(device_id, window_end, Kafka timestamp) of every aggregate on ``topic`` until
    ``settle_s`` after ``stop`` is set."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=broker, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    out: list[tuple[str, int, int]] = []
    loop = asyncio.get_running_loop()
    deadline: float | None = None
    try:
        while deadline is None or loop.time() < deadline:
            if deadline is None and stop.is_set():
                deadline = loop.time() + settle_s
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for r in records:
                    doc = orjson.loads(r.value)
                    out.append((doc["device_id"], doc["window_end"], r.timestamp))
    finally:
        await consumer.stop()
    return out


async def measure(
    broker: str,
    raw_topic: str,
    windows_topic: str,
    devices: list[dict[str, Any]],
    base: int,
    rate: float,
    seconds: float,
    grace_ms: int,
    warmup_s: float = 5.0,
) -> LatencyResult:
    """One rate: generate, collect, match each aggregate with the reading that closed it
    (windows closed in the first ``warmup_s`` are left out)."""
    stop = asyncio.Event()
    collector = asyncio.ensure_future(collect(broker, windows_topic, stop, settle_s=5.0))
    began = time.time_ns() // 1_000_000
    try:
        sent, achieved = await generate(broker, raw_topic, devices, base, rate, seconds)
    finally:
        stop.set()
    aggregates = await collector
    latencies = []
    for device_id, window_end, stamp in aggregates:
        sent_at = sent.get((device_id, closing_ts(base, window_end, grace_ms)))
        if sent_at is None or sent_at < began + warmup_s * 1000:
            continue  # closed by a reading of an earlier rate, or in the warm-up
        latencies.append(float(stamp - sent_at))
    if not latencies:
        raise RuntimeError(f"no aggregate at {rate:.0f} readings/s: is the worker running?")
    result = LatencyResult(
        rate,
        len(sent),
        achieved,
        len(latencies),
        percentile(latencies, 50),
        percentile(latencies, 99),
        percentile(latencies, 99.9),
        max(latencies),
    )
    log.info(
        "latency at %.0f readings/s (achieved %.0f): %d samples, p50 %.0f ms, p99 %.0f ms, "
        "p99.9 %.0f ms",
        rate,
        achieved,
        result.samples,
        result.p50_ms,
        result.p99_ms,
        result.p999_ms,
    )
    return result
