"""The simulated city on a real Kafka: ``citystreams simulate`` and ``citystreams up``.

The pure simulation is :mod:`streams.tools.simulate`; this module sends it, paced against
the wall clock, and shows what the pipeline makes of it.

Speed-up: with ``--speed S`` event time runs S times faster than the wall clock, from a
start far enough back that it never runs ahead of now (the pipeline refuses readings
more than 5 minutes in the future). Devices then report S times as often in wall time,
so the registry published with the simulation says so (``heartbeat_s`` divided by S,
at least 5 s): offline detection, which counts wall-clock silence, keeps its meaning.
Once event time has caught up with the wall clock the city goes on in real time and
the true registry is published.

``up`` twice: the pipeline's state (Kafka's data, the workers' changelogs) outlives a
run, so event time must never go back, or the next run's readings are late or
duplicates for it. ``up`` records how far the city got in ``$CITYSTREAMS_STATE_DIR/
city.json`` (:class:`CityMark`, every few seconds and at exit); the next ``up`` on that
state directory starts its event time no earlier than there (:func:`resume_start`:
at the next window boundary when the wall clock allows) and says in its header
whether it continues the city or starts a fresh one (:func:`resume`).

Alerts in the live view (and ``citystreams alerts tail``) are grouped per status, rule
and district over 30 s of arrival (:mod:`streams.tools.floods`), as Alertmanager groups
notifications; ``--ungrouped`` prints a line per event.
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
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TextIO

import orjson
from aiokafka import AIOKafkaProducer

from streams.kafka.admin import ensure_topics
from streams.kafka.clients import client_kwargs
from streams.settings import Settings
from streams.tools.floods import AlertGroups
from streams.tools.publish import device_messages, follow, publish
from streams.tools.simulate import City
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


@dataclass(frozen=True, slots=True)
class CityMark:
    """How far the simulated city of a state directory got, and which city it was."""

    event_ms: int  # every reading before it may have been sent
    seed: int
    scale: float
    registry: str | None  # the --registry file, or None for the generated fleet
    topic_prefix: str
    app_id: str

    def same_topics(self, other: CityMark) -> bool:
        """Same topics and worker state (else the previous run is no concern of ours)."""
        return (self.topic_prefix, self.app_id) == (other.topic_prefix, other.app_id)

    def same_city(self, other: CityMark) -> bool:
        return (self.seed, self.scale, self.registry) == (other.seed, other.scale, other.registry)

    def describe(self) -> str:
        fleet = self.registry or f"scale {self.scale:g}"
        return f"seed {self.seed}, {fleet}"


MARK_FILE = "city.json"


def mark_path(state_dir: Path) -> Path:
    return state_dir / MARK_FILE


def read_mark(path: Path) -> CityMark | None:
    """The mark a previous ``up`` left, or None (none, or not readable: a fresh city)."""
    try:
        doc = orjson.loads(path.read_bytes())
        return CityMark(
            event_ms=int(doc["event_ms"]),
            seed=int(doc["seed"]),
            scale=float(doc["scale"]),
            registry=None if doc.get("registry") is None else str(doc["registry"]),
            topic_prefix=str(doc.get("topic_prefix", "")),
            app_id=str(doc["app_id"]),
        )
    except FileNotFoundError:
        return None
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        log.warning("%s: not a city mark (%s); starting a fresh city", path, exc)
        return None


def write_mark(path: Path, mark: CityMark) -> None:
    """Atomically: a run killed while writing leaves the previous mark."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(orjson.dumps(asdict(mark), option=orjson.OPT_INDENT_2))
    os.replace(tmp, path)


def _ceil_to(ms: int, size: int) -> int:
    return -(-ms // size) * size


def resume_start(
    previous_ms: int | None,
    planned_ms: int,
    *,
    now_ms: int,
    window_ms: int = 60_000,
    district_window_ms: int = 300_000,
) -> int:
    """Event-time start of a run after one that reached ``previous_ms`` on the same
    pipeline state: ``planned_ms`` (:func:`start_for`), but never before the previous
    run's end. From the next district window's boundary after it, so that no window
    is half-filled by each run (windows the previous run left open may have been closed
    by the wall-clock timers since, and would take no more readings); when that boundary
    lies ahead of the wall clock (the previous run had caught up with it), the next
    device window's; when that too lies ahead, the end itself: the window it falls in
    ends after now, so no timer has closed it, and a city that waited for the boundary
    would go quiet and look offline."""
    if previous_ms is None:
        return planned_ms
    after = previous_ms
    for size in (district_window_ms, window_ms):
        if _ceil_to(previous_ms, size) <= now_ms:
            after = _ceil_to(previous_ms, size)
            break
    return max(planned_ms, after)


def _local(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ms / 1000))


def resume(
    previous: CityMark | None,
    current: CityMark,
    *,
    planned_ms: int,
    explicit_ms: int | None,
    now_ms: int,
    window_ms: int,
    district_window_ms: int,
    where: str,
) -> tuple[int, str]:
    """The event-time start of this run and the header line that says why.

    ``current`` is this run's city (its ``event_ms`` unused); ``explicit_ms`` is
    ``--start``, which wins (with a warning when it goes back)."""
    note = ""
    if previous is not None and not previous.same_topics(current):
        note = (
            f"a fresh city (the previous run in {where} used other topics: prefix "
            f"{previous.topic_prefix!r}, app id {previous.app_id!r})"
        )
        previous = None
    elif previous is None:
        note = f"a fresh city (no previous run in {where})"
    if explicit_ms is not None:
        if previous is None:
            return explicit_ms, note
        if explicit_ms < previous.event_ms:
            return explicit_ms, (
                f"event time from {_local(explicit_ms)} (--start), before the previous run's "
                f"{_local(previous.event_ms)}: the pipeline takes readings up to then as "
                "late or duplicates"
            )
        return explicit_ms, (
            f"event time from {_local(explicit_ms)} (--start; the previous run reached "
            f"{_local(previous.event_ms)})"
        )
    if previous is None:
        return planned_ms, note
    start = resume_start(
        previous.event_ms,
        planned_ms,
        now_ms=now_ms,
        window_ms=window_ms,
        district_window_ms=district_window_ms,
    )
    if start > _ceil_to(previous.event_ms, district_window_ms):
        why = f"the previous run reached {_local(previous.event_ms)}"
    else:
        why = "previous run"
    if previous.same_city(current):
        return start, f"continuing the city from {_local(start)} ({why})"
    return start, (
        f"continuing the event time from {_local(start)} ({why}, of another city: "
        f"{previous.describe()}; this one: {current.describe()}; same Kafka state)"
    )


@dataclass(slots=True)
class Progress:
    event_ms: int = 0  # event time sent, up to (not including)
    reached_ms: int = 0  # event time handed to the producer: at most this was sent
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
            progress.reached_ms = max(progress.reached_ms, target)
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


async def show_alerts(
    settings: Settings,
    out: TextIO,
    groups: AlertGroups,
    *,
    prefix: str = "",
    from_beginning: bool = False,
    count: int = 0,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Follow ``alerts`` and print its events through ``groups`` (a line per group, or
    per event), with a timer that prints each group once its span has passed; stops
    after ``count`` events (0: never) and prints what it still holds when it ends."""

    def emit(lines: list[str]) -> None:
        for line in lines:
            print(prefix + line, file=out, flush=True)

    async def read() -> None:
        seen = 0
        async for value in follow(settings, settings.topic_prefix + ALERTS, from_beginning):
            try:
                record = orjson.loads(value)
            except orjson.JSONDecodeError:
                record = None
            if not isinstance(record, dict):
                emit([f"(unreadable alert record: {value[:80]!r})"])
                continue
            emit(groups.add(record, clock()))
            seen += 1
            if count and seen >= count:
                return

    reader = asyncio.ensure_future(read())
    try:
        while not reader.done():
            due = groups.next_due()
            wait = 1.0 if due is None else min(1.0, max(0.05, due - clock()))
            await asyncio.wait({reader}, timeout=wait)
            emit(groups.due(clock()))
        reader.result()  # its error, if it had one
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        emit(groups.flush())


async def live_view(
    settings: Settings,
    metrics_url: str,
    progress: Progress,
    out: TextIO,
    every_s: float = 5.0,
    groups: AlertGroups | None = None,
) -> None:
    """Alerts as they fire and resolve (grouped: see :mod:`streams.tools.floods`), and a
    status line every few seconds."""
    from streams.operators.commands import show_acks

    task = asyncio.ensure_future(
        show_alerts(settings, out, groups or AlertGroups(), prefix="  alert  ")
    )
    # Who acknowledged what (`citystreams alerts ack`), as it happens.
    acks = asyncio.ensure_future(show_acks(settings, out, prefix="  ack    "))
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
        acks.cancel()
        await asyncio.gather(task, acks, return_exceptions=True)


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
    mark: CityMark | None = None,
    note: str = "",
    ungrouped: bool = False,
    mark_every_s: float = 5.0,
) -> int:
    """Topics, registry, a worker, the simulator and the live view, until the duration
    ends or the process is interrupted.

    ``mark``: this city, written to the state directory's mark file as it goes (its
    ``event_ms`` is a floor: the previous run's); ``note`` says in the header whether
    the city is fresh or continued."""
    from streams.metrics import free_port, port_free

    await ensure_topics(settings)
    await publish(
        settings, settings.topic_prefix + DEVICES, device_messages(registry_for(fleet, speed))
    )
    port = settings.metrics_port
    if not port or not port_free(settings.bind, port):
        port = free_port(settings.bind)
    settings = replace(settings, metrics_port=port)
    groups = AlertGroups(ungrouped=ungrouped)
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
        f"  worker log {log_path}\n"
        + (f"  city       {note}\n" if note else "")
        + "  alerts     "
        + (
            "a line per event"
            if groups.ungrouped
            else f"grouped per status, rule and district over {groups.span_s:g} s of arrival"
        )
        + "\n  Ctrl-C stops everything.",
        file=out,
        flush=True,
    )
    progress = Progress(event_ms=city.now)
    path = mark_path(settings.state_dir)

    def save() -> None:
        if mark is not None and progress.reached_ms:
            write_mark(path, replace(mark, event_ms=max(mark.event_ms, progress.reached_ms)))

    async def keep_mark() -> None:
        while True:
            await asyncio.sleep(mark_every_s)
            save()

    tasks = [
        asyncio.ensure_future(
            run_city(settings, city, fleet, speed=speed, duration_s=duration_s, progress=progress)
        ),
        asyncio.ensure_future(live_view(settings, url, progress, out, groups=groups)),
        asyncio.ensure_future(keep_mark()),
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
        save()
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
        bad = ", ".join(f"{k} {v:,}" for k, v in sorted(city.counts.bad.items()))
        print(
            f"citystreams up: stopped; {city.counts.readings:,} readings"
            f" in {city.counts.messages:,} messages sent"
            + (f"; bad data sent: {bad}" if bad else "")
            + (
                f"; the city reached {_local(progress.reached_ms)} ({path})"
                if mark is not None and progress.reached_ms
                else ""
            ),
            file=out,
            flush=True,
        )
