"""Alert episodes in a real Alertmanager (Debian's prometheus-alertmanager, started by
each test on ports of its own), from the real worker or the ``alerts`` topic on the real
Kafka, through ``citystreams alerts forward``; acknowledgements with ``alerts ack``.

Episodes that come from the worker: the CO2 episode, the parent outage, the
acknowledged and reminded ones. The kill -9 and the Alertmanager outage tests write
alert events onto ``alerts`` themselves (the forwarder's input is that topic, whoever
writes it), so that dozens of episodes open, escalate and resolve on cue.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import signal
import subprocess
import time
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.kafka.admin import ensure_topics
from streams.operators.commands import show_acks
from streams.settings import Settings
from streams.tools.publish import device_messages
from streams.topics import ALERT_ACKS, ALERTS, DEVICES, TELEMETRY_ENRICHED, TELEMETRY_RAW
from tests.amutil import Alertmanager, config, receiver
from tests.conftest import cli, free_port, spawn, until
from tests.kafkautil import consume_records, produce_messages

pytestmark = pytest.mark.kafka
ROOT = Path(__file__).resolve().parents[1]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def device(device_id: str, kind: str, **extra: Any) -> dict[str, Any]:
    base = {"district": "Mitte", "site": "gs088", "lat": 51.43, "lon": 6.76}
    return {"device_id": device_id, "kind": kind} | base | extra


def with_am(settings: Settings, *urls: str, resend_s: float = 3.0) -> Settings:
    return replace(
        settings,
        alertmanager_url=",".join(urls),
        alertmanager_resend_s=resend_s,
        alertmanager_retry_max_s=2.0,
        forwarder_metrics_port=free_port(),
    )


def scrape(settings: Settings) -> str:
    url = f"http://127.0.0.1:{settings.forwarder_metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=2) as response:
        return str(response.read().decode())


def sample(text: str, name: str) -> float:
    """Sum of a metric's samples on a /metrics page."""
    return sum(
        float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)
    )


async def start_forwarder(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    """``citystreams alerts forward``, once it reads its partitions."""
    proc = spawn(settings, "streams", "alerts", "forward", log=log)

    def ready() -> bool:
        assert proc.poll() is None, log.read_text()[-3000:]
        return sample(scrape(settings), "citystreams_forwarder_partitions_assigned") > 0

    await until("the forwarder to read alerts", ready, 60, every=0.3)
    return proc


async def start_worker(settings: Settings, log: Path, probe: dict[str, Any]) -> Any:
    """A worker that has processed a first reading (of ``probe``, a device)."""
    worker = spawn(settings, "streams", "worker", log=log)
    reading = {"device_id": probe["device_id"], "ts": now_ms(), "metrics": {"clients": 1}}
    await produce_messages(
        settings.broker,
        settings.topic_prefix + TELEMETRY_RAW,
        [(probe["device_id"].encode(), orjson.dumps(reading))],
    )
    started = await consume_records(
        settings.broker, settings.topic_prefix + TELEMETRY_ENRICHED, 1, timeout=60
    )
    assert started, f"the worker processed nothing: see {log}"
    return worker


def stop(*procs: subprocess.Popen[bytes] | None) -> None:
    for proc in procs:
        if proc is not None and proc.poll() is None:
            proc.terminate()
    for proc in procs:
        if proc is not None:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def co2_readings(room: str, start: int, minutes: float, ppm: float) -> list[tuple[bytes, bytes]]:
    """A reading every 30 s of event time from ``start`` for ``minutes``."""
    count = int(minutes * 2)
    return [
        (
            room.encode(),
            orjson.dumps(
                {"device_id": room, "ts": start + i * 30_000, "metrics": {"co2_ppm": ppm}}
            ),
        )
        for i in range(count)
    ]


async def alert_events(settings: Settings, want: int) -> list[Any]:
    return await consume_records(settings.broker, settings.topic_prefix + ALERTS, want, timeout=60)


async def test_a_co2_episode_reaches_alertmanager_and_leaves_it(
    settings: Settings, tmp_path: Path
) -> None:
    ap = device("dui-mitte-gs088-ap1", "wlan_ap", heartbeat_s=3600)
    room = device(
        "dui-mitte-gs088-r3-air", "classroom_air", parent=ap["device_id"], heartbeat_s=3600
    )
    raw = settings.topic_prefix + TELEMETRY_RAW
    with receiver() as ear:
        am = Alertmanager(tmp_path, config(ear.url))
        am.start()
        settings = with_am(settings, am.url)
        await ensure_topics(settings)
        await produce_messages(
            settings.broker, settings.topic_prefix + DEVICES, device_messages([ap, room])
        )
        worker = forwarder = None
        try:
            worker = await start_worker(settings, tmp_path / "worker.log", ap)
            forwarder = await start_forwarder(settings, tmp_path / "forwarder.log")
            base = now_ms() - 30 * 60_000
            base -= base % 60_000
            # 7 minutes above 1000 ppm: the episode fires 5 minutes in.
            await produce_messages(
                settings.broker, raw, co2_readings(room["device_id"], base, 7, 1200)
            )
            fired = (await alert_events(settings, 1))[0]
            event = orjson.loads(fired.value)
            alert_id = event["alert_id"]
            seen = await until("the episode in Alertmanager", lambda: am.active().get(alert_id), 10)
            seen_at = now_ms()
            assert seen_at - fired.timestamp <= 5000, seen_at - fired.timestamp
            assert seen["labels"] == {
                "alertname": "classroom_co2_high",
                "severity": "warning",
                "alert_id": alert_id,
                "device_id": room["device_id"],
                "kind": "classroom_air",
                "district": "Mitte",
                "site": "gs088",
                "parent": ap["device_id"],
            }
            notes = seen["annotations"]
            assert notes["summary"] == event["summary"]
            assert (notes["value"], notes["threshold"], notes["alert_id"]) == (
                "1200",
                "1000",
                alert_id,
            )
            assert notes["runbook_url"].endswith("README.md#runbook-alert-episodes")
            # amtool sees it too, by its labels.
            assert alert_id in am.amtool("-o", "extended", "alert", "query", f"alert_id={alert_id}")
            # Back below 900 ppm for a minute and a half: it resolves and leaves.
            await produce_messages(
                settings.broker, raw, co2_readings(room["device_id"], base + 7 * 60_000, 1.5, 700)
            )
            resolved = orjson.loads((await alert_events(settings, 2))[1].value)
            assert (resolved["alert_id"], resolved["status"]) == (alert_id, "resolved")
            await until("the episode to leave", lambda: alert_id not in am.active(), 10)
            # Acknowledging a resolved episode is refused: one line, exit code 2.
            refused = cli(settings, "alerts", "ack", alert_id, "--by", "alice")
            assert refused.returncode == 2, refused
            assert refused.stderr.strip().count("\n") == 0 and "resolved" in refused.stderr
            await asyncio.sleep(3)
            assert ear.alert_ids(status="firing").count(alert_id) == 1, ear.calls
            metrics = scrape(settings)
            assert sample(metrics, "citystreams_forwarder_alerts_posted_total") >= 2
            assert sample(metrics, "citystreams_forwarder_episodes_open") == 0
            assert room["device_id"] not in metrics
        finally:
            stop(worker, forwarder)
            am.stop()


async def test_a_parent_outage_with_five_children_is_one_alert(
    settings: Settings, tmp_path: Path
) -> None:
    ap = device("dui-mitte-gs087-ap1", "wlan_ap", heartbeat_s=2.0)
    sensors = [
        device(
            f"dui-mitte-gs087-s{i}-air", "classroom_air", parent=ap["device_id"], heartbeat_s=2.0
        )
        for i in range(5)
    ]
    raw = settings.topic_prefix + TELEMETRY_RAW
    with receiver() as ear:
        am = Alertmanager(tmp_path, config(ear.url))
        am.start()
        settings = with_am(settings, am.url)
        await ensure_topics(settings)
        await produce_messages(
            settings.broker, settings.topic_prefix + DEVICES, device_messages([ap, *sensors])
        )
        worker = forwarder = None
        try:
            worker = await start_worker(settings, tmp_path / "worker.log", ap)
            forwarder = await start_forwarder(settings, tmp_path / "forwarder.log")
            for _ in range(5):  # everyone reports every second, then the uplink fails
                await produce_messages(
                    settings.broker,
                    raw,
                    [
                        (
                            d["device_id"].encode(),
                            orjson.dumps(
                                {
                                    "device_id": d["device_id"],
                                    "ts": now_ms(),
                                    "metrics": {"clients": 3},
                                }
                            ),
                        )
                        for d in (ap, *sensors)
                    ],
                )
                await asyncio.sleep(1)
            events = await alert_events(settings, 1)
            await until("the outage in Alertmanager", am.active, 10)
            await asyncio.sleep(6)  # time for a storm, were there one
            active = am.active()
            assert len(active) == 1, active
            (alert,) = active.values()
            assert alert["labels"]["alertname"] == "device_offline"
            assert alert["labels"]["device_id"] == ap["device_id"]
            assert alert["annotations"]["affected_children"] == "5"
            assert [orjson.loads(e.value)["device_id"] for e in events] == [ap["device_id"]]
        finally:
            stop(worker, forwarder)
            am.stop()


async def shown_acks(settings: Settings, device_id: str) -> None:
    """Who acknowledged what, as `alerts tail` and `up` print it: an ack and an unack."""
    shown = io.StringIO()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(show_acks(settings, shown, from_beginning=True), 8)
    lines = shown.getvalue().splitlines()
    assert len(lines) == 2 and "ACKED" in lines[0] and "UNACKED" in lines[1], lines
    assert "by alice until" in lines[0] and "(window open)" in lines[0]
    assert device_id in lines[0]


async def test_an_acknowledged_episode_is_silenced_and_gets_no_reminder(
    settings: Settings, tmp_path: Path
) -> None:
    rooms = [device(f"dui-mitte-gs086-r{i}-air", "classroom_air", heartbeat_s=3600) for i in (1, 2)]
    raw = settings.topic_prefix + TELEMETRY_RAW
    with receiver() as ear:
        am = Alertmanager(tmp_path, config(ear.url, repeat="4s"))
        am.start()
        settings = with_am(settings, am.url)
        await ensure_topics(settings)
        await produce_messages(
            settings.broker, settings.topic_prefix + DEVICES, device_messages(rooms)
        )
        worker = forwarder = None
        try:
            worker = await start_worker(settings, tmp_path / "worker.log", rooms[0])
            forwarder = await start_forwarder(settings, tmp_path / "forwarder.log")
            base = now_ms() - 30 * 60_000
            base -= base % 60_000
            for room in rooms:  # 2500 ppm for 7 minutes: critical episodes
                await produce_messages(
                    settings.broker, raw, co2_readings(room["device_id"], base, 7, 2500)
                )
            events = [orjson.loads(r.value) for r in await alert_events(settings, 2)]
            assert {e["severity"] for e in events} == {"critical"}
            ids = {e["device_id"]: e["alert_id"] for e in events}
            acked, other = ids[rooms[0]["device_id"]], ids[rooms[1]["device_id"]]
            await until(
                "a first notification of both", lambda: {acked, other} <= set(ear.alert_ids()), 15
            )
            unknown = cli(settings, "alerts", "ack", "0123456789abcdef", "--by", "alice")
            assert unknown.returncode == 2 and "unknown" in unknown.stderr, unknown
            assert unknown.stderr.strip().count("\n") == 0
            done = cli(
                settings,
                "alerts",
                "ack",
                acked,
                "--by",
                "alice",
                "--comment",
                "window open",
                "--until",
                "2h",
            )
            assert done.returncode == 0, done
            ack_time = time.monotonic()
            assert "by alice" in done.stdout
            # The silence, as amtool shows it, and the record on Kafka.
            assert acked in am.amtool("-o", "extended", "silence", "query", f"alert_id={acked}")
            (record,) = await consume_records(
                settings.broker, settings.topic_prefix + ALERT_ACKS, 1, timeout=10
            )
            ack = orjson.loads(record.value)
            assert record.key == acked.encode()
            assert (ack["action"], ack["by"], ack["comment"], ack["device_id"]) == (
                "ack",
                "alice",
                "window open",
                rooms[0]["device_id"],
            )
            await asyncio.sleep(10)  # more than two repeat intervals
            after = ear.alert_ids(since=ack_time + 1)
            assert acked not in after, ear.calls
            assert other in after, ear.calls  # the unacknowledged critical one was reminded
            assert am.active()[acked]["status"]["state"] == "suppressed"
            # unack: the silence is gone, and that is on Kafka too.
            undone = cli(settings, "alerts", "unack", acked, "--by", "alice")
            assert undone.returncode == 0, undone
            assert acked not in am.amtool("-o", "extended", "silence", "query", f"alert_id={acked}")
            records = await consume_records(
                settings.broker, settings.topic_prefix + ALERT_ACKS, 2, timeout=10
            )
            assert [orjson.loads(r.value)["action"] for r in records] == ["ack", "unack"]
            await shown_acks(settings, rooms[0]["device_id"])
        finally:
            stop(worker, forwarder)
            am.stop()


def event(
    n: int, status: str, starts: int, severity: str = "warning", **extra: Any
) -> dict[str, Any]:
    """An alert event as the worker writes it (streams/stages/alerts.py), for episode ``n``."""
    rule = "reefer_temperature" if severity != "critical" else "reefer_temperature_critical"
    return {
        "alert_id": f"ep{n:04d}",
        "rule": rule,
        "status": status,
        "severity": severity,
        "device_id": f"dui-hafen-reefer{n}",
        "kind": "reefer",
        "district": "Hafen",
        "site": "logport1",
        "metric": "temperature_c",
        "value": 9.5,
        "threshold": 2.0,
        "starts_at": starts,
        "ends_at": now_ms() if status == "resolved" else None,
        "summary": f"reefer {n} warm",
        "at": now_ms(),
    } | extra


async def write(settings: Settings, events: list[dict[str, Any]]) -> None:
    await produce_messages(
        settings.broker,
        settings.topic_prefix + ALERTS,
        [(e["device_id"].encode(), orjson.dumps(e)) for e in events],
    )


def expected(events: list[dict[str, Any]]) -> dict[str, str]:
    """alert_id -> severity of the open episodes the events leave."""
    open_: dict[str, str] = {}
    closed: set[str] = set()
    for e in events:
        if e["status"] == "resolved":
            closed.add(e["alert_id"])
            open_.pop(e["alert_id"], None)
        elif e["alert_id"] not in closed:
            open_[e["alert_id"]] = e["severity"]
    return open_


def seen(am: Alertmanager) -> dict[str, str]:
    return {a: alert["labels"]["severity"] for a, alert in am.active().items()}


async def test_kill_9_of_the_forwarder_mid_run(settings: Settings, tmp_path: Path) -> None:
    with receiver() as ear:
        am = Alertmanager(tmp_path, config(ear.url))
        am.start()
        settings = with_am(settings, am.url)
        await ensure_topics(settings)
        forwarder = await start_forwarder(settings, tmp_path / "forwarder-1.log")
        start = now_ms() - 60_000
        sent: list[dict[str, Any]] = []
        try:
            for step in range(60):  # 60 episodes open; every third resolves, every fifth escalates
                batch = [event(step, "firing", start)]
                if step >= 3 and step % 3 == 0:
                    batch.append(event(step - 3, "resolved", start))
                if step >= 2 and step % 5 == 0:
                    batch.append(event(step - 2, "firing", start, "critical"))
                if step == 30:
                    forwarder.send_signal(signal.SIGKILL)
                    forwarder.wait(10)
                await write(settings, batch)
                sent += batch
                await asyncio.sleep(0.05)
            # A worker's at-least-once repeat of a resolved episode's firing event.
            repeat = next(e for e in sent if e["status"] == "resolved")
            await write(settings, [event(int(repeat["alert_id"][2:]), "firing", start)])
            want = expected(sent)
            forwarder = await start_forwarder(settings, tmp_path / "forwarder-2.log")
            restarted = time.monotonic()
            await until("Alertmanager equal to the open episodes", lambda: seen(am) == want, 60)
            assert time.monotonic() - restarted < 60
            await asyncio.sleep(4)  # and it stays so (nothing resurrected by a resend)
            assert seen(am) == want
            assert len(want) > 30 and "critical" in want.values()
        finally:
            stop(forwarder)
            am.stop()


async def test_every_change_arrives_after_alertmanager_was_stopped_for_60_s(
    settings: Settings, tmp_path: Path
) -> None:
    with receiver() as ear:
        am = Alertmanager(tmp_path, config(ear.url))
        am.start()
        # A resend interval longer than the test: what comes back is what was pending.
        settings = with_am(settings, am.url, resend_s=300)
        await ensure_topics(settings)
        forwarder = await start_forwarder(settings, tmp_path / "forwarder.log")
        start = now_ms() - 60_000
        try:
            first = [event(n, "firing", start) for n in range(10)]
            await write(settings, first)
            await until("the first episodes", lambda: seen(am) == expected(first), 10)
            am.stop()
            down = time.monotonic()
            changes = [event(n, "resolved", start) for n in range(0, 10, 2)]
            changes += [event(n, "firing", start, "critical") for n in (1, 3)]
            changes += [event(n, "firing", start) for n in range(10, 15)]
            for change in changes:  # spread over the outage
                await write(settings, [change])
                await asyncio.sleep(2)
            await until(
                "a failure to be counted",
                lambda: sample(scrape(settings), "citystreams_forwarder_post_failures_total") > 0,
                30,
            )
            assert (
                sample(scrape(settings), "citystreams_forwarder_oldest_unsent_change_seconds") > 5
            )
            await asyncio.sleep(max(0.0, 60 - (time.monotonic() - down)))
            am.start()  # (Alertmanager keeps no alerts over a restart: all must come again)
            want = expected(first + changes)
            await until("every change", lambda: seen(am) == want, 15)
            assert len(want) == 10 and list(want.values()).count("critical") == 2
            await until(
                "nothing unsent",
                lambda: (
                    sample(scrape(settings), "citystreams_forwarder_oldest_unsent_change_seconds")
                    == 0
                ),
                5,
            )
        finally:
            stop(forwarder)
            am.stop()


async def test_every_alertmanager_of_the_list_gets_every_alert_inhibition_and_silence(
    settings: Settings, tmp_path: Path
) -> None:
    with receiver() as ear:
        ams = [Alertmanager(tmp_path, config(ear.url)) for _ in range(2)]
        for am in ams:
            am.start()
        settings = with_am(settings, *(am.url for am in ams))
        await ensure_topics(settings)
        forwarder = await start_forwarder(settings, tmp_path / "forwarder.log")
        try:
            start = now_ms() - 1000
            episodes = [
                event(0, "firing", start, "critical"),
                event(1, "firing", start),  # a warning at the critical one's site
                event(2, "firing", start, site="logport2"),  # a warning elsewhere
            ]
            await write(settings, episodes)
            for am in ams:
                await until("the episodes", lambda am=am: seen(am) == expected(episodes), 10)

            def states() -> dict[str, str]:
                return {a: alert["status"]["state"] for a, alert in ams[0].active().items()}

            # The shipped inhibition: critical before warning within a site.
            want = {"ep0000": "active", "ep0001": "suppressed", "ep0002": "active"}
            await until("the inhibition", lambda: states() == want, 10)
            # An acknowledgement silences the episode in both; its resolution expires both.
            done = cli(settings, "alerts", "ack", "ep0002", "--by", "bob")
            assert done.returncode == 0, done
            for am in ams:
                assert "ep0002" in am.amtool("-o", "extended", "silence", "query")
            await write(settings, [event(2, "resolved", start, site="logport2")])
            for am in ams:
                await until(
                    "the silence to expire",
                    lambda am=am: "ep0002" not in am.amtool("-o", "extended", "silence", "query"),
                    10,
                )
        finally:
            stop(forwarder)
            for am in ams:
                am.stop()
