"""The simulated city on a real Kafka: ``citystreams simulate`` and ``citystreams up``.

The pure simulation is :mod:`streams.simulate`; this module sends it, paced against
the wall clock, and shows what the pipeline makes of it.

Speed-up: with ``--speed S`` event time runs S times faster than the wall clock, from a
start far enough back that it never runs ahead of now (the pipeline refuses readings
more than 5 minutes in the future). Devices then report S times as often in wall time,
so the registry published with the simulation says so (``heartbeat_s`` divided by S,
at least 5 s): offline detection, which counts wall-clock silence, keeps its meaning.
Once event time has caught up with the wall clock the city goes on in real time and
the true registry is published.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TextIO

import orjson
from aiokafka import AIOKafkaProducer

from streams.admin import ensure_topics
from streams.backtest import describe_alert
from streams.produce import device_messages, follow, publish
from streams.security import client_kwargs
from streams.settings import Settings
from streams.simulate import City
from streams.topics import ALERTS, DEVICES, TELEMETRY_RAW

log = logging.getLogger(__name__)

MIN_HEARTBEAT_S = 5.0  # below this, a busy 2-core machine makes devices look silent


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def registry_for(fleet: list[dict[str, Any]], speed: float) -> list[dict[str, Any]]:
    """The fleet as it behaves in wall-clock time at ``speed`` (see the module doc)."""
    if speed <= 1:
        return fleet
    out = []
    for record in fleet:
        hb = record.get("heartbeat_s")
        if isinstance(hb, int | float):
            record = dict(record, heartbeat_s=round(max(MIN_HEARTBEAT_S, hb / speed), 3))
        out.append(record)
    return out


def start_for(speed: float, duration_s: float | None, now: int) -> int:
    """Event-time start: with a speed-up, far enough back never to pass the wall clock
    (a bounded run ends at about now; an open-ended one replays the last 23 hours)."""
    if speed <= 1:
        return now
    span = duration_s if duration_s is not None else 23 * 3600 / (speed - 1)
    return now - int(span * (speed - 1) * 1000)


@dataclass(slots=True)
class Progress:
    event_ms: int = 0
    sent: int = 0
    caught_up: bool = False


async def run_city(
    settings: Settings,
    city: City,
    fleet: list[dict[str, Any]],
    *,
    speed: float,
    duration_s: float | None,
    progress: Progress,
    tick_s: float = 0.5,
) -> None:
    """Send the city's telemetry, paced; returns after ``duration_s`` (or never)."""
    producer = AIOKafkaProducer(
        **client_kwargs(settings), linger_ms=20, max_request_size=2**20, acks=1
    )
    await producer.start()
    raw = settings.topic_prefix + TELEMETRY_RAW
    wall0, event0 = now_ms(), city.now
    try:
        while True:
            wall = now_ms()
            target = event0 + int((wall - wall0) * speed)
            if target >= wall:  # caught up: real time from here on
                target = wall
                if speed > 1 and not progress.caught_up:
                    progress.caught_up = True
                    await publish(settings, settings.topic_prefix + DEVICES, device_messages(fleet))
                    log.info("event time caught up with the wall clock: real time from now")
            for key, value in city.until(target):
                await producer.send(raw, value, key=key)
                progress.sent += 1
            await producer.flush()
            progress.event_ms = target
            if duration_s is not None and wall - wall0 >= duration_s * 1000:
                return
            await asyncio.sleep(tick_s)
    finally:
        await producer.stop()


def scrape(url: str) -> dict[str, float]:
    """Sum of each metric family's samples on a /metrics page ({} if unreachable)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return {}
    totals: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r"^([a-z_]+)(?:\{[^}]*\})? ([0-9.eE+-]+)$", line)
        if m:
            totals[m.group(1)] = totals.get(m.group(1), 0.0) + float(m.group(2))
    return totals


async def live_view(
    settings: Settings,
    metrics_url: str,
    progress: Progress,
    out: TextIO,
    every_s: float = 5.0,
) -> None:
    """Alerts as they fire and resolve, and a status line every few seconds."""

    async def alerts() -> None:
        async for value in follow(settings, settings.topic_prefix + ALERTS):
            try:
                line = describe_alert(orjson.loads(value))
            except (orjson.JSONDecodeError, TypeError, ValueError, AttributeError):
                continue
            print(f"  alert  {line}", file=out, flush=True)

    task = asyncio.ensure_future(alerts())
    last: dict[str, float] = {}
    last_t = time.monotonic()
    try:
        while True:
            await asyncio.sleep(every_s)
            m = await asyncio.to_thread(scrape, metrics_url)
            t = time.monotonic()
            rate = (
                m.get("citystreams_readings_in_total", 0)
                - last.get("citystreams_readings_in_total", 0)
            ) / max(t - last_t, 1e-6)
            event = time.strftime("%Y-%m-%d %H:%M", time.localtime(progress.event_ms / 1000))
            print(
                f"[city {event}] readings {rate:,.0f}/s"
                f" | valid {m.get('citystreams_readings_valid_total', 0):,.0f}"
                f" | dead letters {m.get('citystreams_deadletters_total', 0):,.0f}"
                f" | windows {m.get('citystreams_windows_emitted_total', 0):,.0f}"
                f" | alert events {m.get('citystreams_alert_events_total', 0):,.0f}",
                file=out,
                flush=True,
            )
            last, last_t = m, t
    finally:
        task.cancel()


def spawn_worker(settings: Settings, log_path: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITYSTREAMS_")}
    env.update(settings.to_env())
    out = open(log_path, "ab")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        [sys.executable, "-m", "streams", "worker"], env=env, stdout=out, stderr=subprocess.STDOUT
    )


async def up(
    settings: Settings,
    fleet: list[dict[str, Any]],
    city: City,
    *,
    speed: float,
    duration_s: float | None,
    out: TextIO,
    stop: Callable[[], bool] = lambda: False,
) -> int:
    """Topics, registry, a worker, the simulator and the live view, until the duration
    ends or the process is interrupted."""
    from streams.metrics import free_port, port_free

    await ensure_topics(settings)
    await publish(
        settings, settings.topic_prefix + DEVICES, device_messages(registry_for(fleet, speed))
    )
    port = settings.metrics_port
    if not port or not port_free(settings.bind, port):
        port = free_port(settings.bind)
    settings = replace(settings, metrics_port=port)
    log_path = str(settings.state_dir / "worker.log")
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    worker = spawn_worker(settings, log_path)
    url = f"http://{settings.bind}:{port}/metrics"
    topics = ", ".join(
        settings.topic_prefix + t for t in ("metrics.device", "metrics.district", ALERTS)
    )
    print(
        f"citystreams up: {len(fleet)} devices, event time x{speed:g}\n"
        f"  Kafka      {settings.broker}\n  /metrics   {url}\n  topics     {topics}\n"
        f"  worker log {log_path}\n  Ctrl-C stops everything.",
        file=out,
        flush=True,
    )
    progress = Progress(event_ms=city.now)
    tasks = [
        asyncio.ensure_future(
            run_city(settings, city, fleet, speed=speed, duration_s=duration_s, progress=progress)
        ),
        asyncio.ensure_future(live_view(settings, url, progress, out)),
    ]
    try:
        # Polled: the worker is a process, not something asyncio can wait on here.
        while not tasks[0].done() and worker.poll() is None and not stop():  # noqa: ASYNC110
            await asyncio.sleep(0.5)
        if worker.poll() is not None:
            print(
                f"citystreams up: the worker stopped (exit {worker.returncode}); see {log_path}",
                file=out,
            )
            return 1
        if tasks[0].done() and tasks[0].exception() is not None:
            raise tasks[0].exception()  # type: ignore[misc]
        # Let the last readings through before stopping.
        await asyncio.sleep(3)
        return 0
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
        print(
            f"citystreams up: stopped; {city.counts.readings:,} readings"
            f" in {city.counts.messages:,} messages sent",
            file=out,
            flush=True,
        )
