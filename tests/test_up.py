"""`citystreams up` twice on one state directory: the second run continues the city's
event time (never back), and the pipeline takes its readings as the first run's.

The helpers are tested without a broker; the last test runs `up` twice on the real one.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
from collections import Counter
from pathlib import Path

import orjson
import pytest

from streams.settings import Settings
from streams.tools.demo import CityMark, read_mark, resume, resume_start, write_mark
from streams.topics import ALERTS, DEADLETTER
from tests.conftest import cli
from tests.kafkautil import consume_records

MIN = 60_000
NOW = 1_796_000_000_000 - 1_796_000_000_000 % (5 * MIN) + 2 * MIN  # 2 min into a district window
CITY = CityMark(event_ms=0, seed=1, scale=1.0, registry=None, topic_prefix="", app_id="cs")


def start(previous: int | None, planned: int, now: int = NOW) -> int:
    return resume_start(previous, planned, now_ms=now, window_ms=MIN, district_window_ms=5 * MIN)


def test_without_a_previous_run_the_planned_start_stands() -> None:
    assert start(None, NOW - 100 * MIN) == NOW - 100 * MIN


def test_a_previous_run_long_ago_does_not_hold_the_city_back() -> None:
    assert start(NOW - 300 * MIN, NOW - 100 * MIN) == NOW - 100 * MIN


def test_event_time_never_goes_back_past_the_previous_run() -> None:
    # The first run reached 20 minutes ago; a bounded second run would start 100 back.
    reached = NOW - 20 * MIN + 1234
    got = start(reached, NOW - 100 * MIN)
    assert got >= reached
    assert got % (5 * MIN) == 0 and got - reached < 5 * MIN  # the next district window


def test_a_previous_run_near_the_wall_clock_resumes_at_once() -> None:
    # An open-ended run had caught up: the next district window lies ahead of the wall
    # clock, and the city cannot go quiet for minutes (its devices would look offline).
    reached = NOW - 70_000
    assert start(reached, NOW - 100 * MIN) == NOW - MIN  # the next device window
    reached = NOW - 40_000  # that too lies ahead of the wall clock: right where it stopped
    assert start(reached, NOW - 100 * MIN, now=NOW - 10_000) == reached


def test_resume_says_whether_the_city_is_fresh_or_continued() -> None:
    def run(
        previous: CityMark | None, current: CityMark = CITY, explicit: int | None = None
    ) -> tuple[int, str]:
        return resume(
            previous,
            current,
            planned_ms=NOW - 100 * MIN,
            explicit_ms=explicit,
            now_ms=NOW,
            window_ms=MIN,
            district_window_ms=5 * MIN,
            where="/state",
        )

    assert run(None) == (NOW - 100 * MIN, "a fresh city (no previous run in /state)")
    previous = CityMark(NOW - 20 * MIN, 1, 1.0, None, "", "cs")
    begin, note = run(previous)
    assert begin >= previous.event_ms
    assert note.startswith("continuing the city from ") and note.endswith("(previous run)")
    begin, note = run(previous, CityMark(0, 3, 0.05, None, "", "cs"))
    assert begin >= previous.event_ms
    assert note.startswith("continuing the event time from ")
    assert "another city: seed 1, scale 1" in note and "this one: seed 3, scale 0.05" in note
    other = CityMark(NOW - 20 * MIN, 1, 1.0, None, "dev.", "cs")
    assert run(other) == (
        NOW - 100 * MIN,
        "a fresh city (the previous run in /state used other topics: prefix 'dev.', app id 'cs')",
    )
    begin, note = run(previous, explicit=NOW - 60 * MIN)
    assert begin == NOW - 60 * MIN and "late or duplicates" in note


def test_the_mark_survives_a_round_trip_and_a_bad_file_is_a_fresh_city(tmp_path: Path) -> None:
    path = tmp_path / "state" / "city.json"
    assert read_mark(path) is None
    mark = CityMark(NOW, 2, 0.5, "/fleet.jsonl", "t.", "cs")
    write_mark(path, mark)
    assert read_mark(path) == mark
    path.write_text("{not json")
    assert read_mark(path) is None


# --- on the real broker ---------------------------------------------------------------

SCENARIOS = ["unventilated_classroom@1", "cell_outage@1", "bad_data@0"]
STATUS = re.compile(r"^\[city [^]]+\] readings [0-9,]+/s \| valid ([0-9,]+) \| dead letters")
BAD = re.compile(r"bad data sent: ([a-z_ 0-9,]+?)(?:;|$)", re.MULTILINE)


def run_up(settings: Settings) -> subprocess.CompletedProcess[str]:
    args = ["up", "--external-kafka", "--duration", "120", "--seed", "3", "--scale", "0.05"]
    args += [f"--scenario={s}" for s in SCENARIOS]
    return cli(settings, *args, timeout=400)


def valid_counts(stdout: str) -> list[int]:
    """The worker's valid readings from each status line (every 5 s)."""
    return [
        int(m.group(1).replace(",", ""))
        for line in stdout.splitlines()
        if (m := STATUS.match(line))
    ]


def bad_sent(stdout: str) -> Counter[str]:
    m = BAD.search(stdout)
    counts: Counter[str] = Counter()
    for part in m.group(1).split(", ") if m else []:
        name, number = part.rsplit(" ", 1)
        counts[name] = int(number.replace(",", ""))
    return counts


async def topic_counts(settings: Settings, topic: str, field: str) -> Counter[str]:
    records = await consume_records(settings.broker, settings.topic_prefix + topic, 10**6, 10)
    return Counter(str(orjson.loads(r.value)[field]) for r in records if r.value)


@pytest.mark.kafka
async def test_up_twice_in_a_row_continues_the_city(settings: Settings) -> None:
    first = await asyncio.to_thread(run_up, settings)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "  city       a fresh city (no previous run in " in first.stdout
    alerts1 = await topic_counts(settings, ALERTS, "rule")
    dead1 = await topic_counts(settings, DEADLETTER, "reason")
    mark = read_mark(settings.state_dir / "city.json")
    assert mark is not None

    second = await asyncio.to_thread(run_up, settings)
    out = second.stdout
    assert second.returncode == 0, out[-3000:] + second.stderr[-3000:]
    assert "  city       continuing the city from " in out, out[:1500]
    after = read_mark(settings.state_dir / "city.json")
    assert after is not None and after.event_ms > mark.event_ms

    # Valid readings grow from the second run's first minute on (a dead city: ~0).
    valid = valid_counts(out)
    assert len(valid) >= 20, out[-3000:]
    assert 0 < valid[11] < valid[-1] and valid[1] < valid[11], valid

    # Its alerts: no more than the first run's plus what its own scenarios raise (a dead
    # city pages device_offline for every device).
    alerts2 = await topic_counts(settings, ALERTS, "rule") - alerts1
    allowance = 2 * len(SCENARIOS) + 2  # firing and resolved per scenario, an escalation
    assert sum(alerts2.values()) <= sum(alerts1.values()) + allowance, (alerts1, alerts2)

    # Its dead letters: only the bad_data scenario's (no `late` cascade, no ts_future).
    dead2 = await topic_counts(settings, DEADLETTER, "reason") - dead1
    bad = bad_sent(out)
    bad.pop("duplicate", None)  # counted, not dead-lettered
    print(
        f"second run: valid every 30 s {valid[::6]}; alert events by rule, first run "
        f"{dict(alerts1)}, second {dict(alerts2)}; dead letters {dict(dead2)}, bad data "
        f"sent {dict(bad)}"
    )
    assert set(dead2) <= set(bad) and all(dead2[r] <= bad[r] for r in dead2), (dead2, bad)
