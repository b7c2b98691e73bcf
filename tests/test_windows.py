"""Event-time windows with explicit, aligned times. Window size 60 s, grace 10 s.

T is an aligned minute; ``at(s)`` is T plus s seconds.
"""

from __future__ import annotations

import math
import random

import pytest

from streams.stages.windows import (
    Closed,
    DeviceState,
    DistrictState,
    add_device_window,
    add_reading,
    close_districts,
    close_idle,
    device_window_record,
    district_window_record,
    sketch_add,
    sketch_quantile,
)

SIZE, GRACE, IDLE = 60_000, 10_000, 10_000
T = 1_795_780_800_000  # 2026-11-27T12:00:00Z, a multiple of 5 minutes


def at(seconds: float) -> int:
    return T + int(seconds * 1000)


def feed(state: DeviceState, *readings: tuple[float, float]) -> list[tuple[int, dict]]:
    """Add (second, co2) readings; returns everything closed, as (start, stats)."""
    closed = []
    for second, co2 in readings:
        late, done = add_reading(state, at(second), {"co2_ppm": co2}, at(second), SIZE, GRACE)
        assert not late
        closed += done
    return [
        (window.start, device_window_record("d", "k", "D", "s", window)["metrics"])
        for window in closed
    ]


def test_window_closes_when_the_devices_watermark_passes_its_end() -> None:
    state = DeviceState()
    assert feed(state, (0, 400), (30, 600), (59.999, 500)) == []  # [T, T+60) still open
    assert feed(state, (69.999, 450)) == []  # watermark 59.999 s < end
    closed = feed(state, (70, 700))  # watermark reaches 60 s: [T, T+60) closes
    assert closed == [
        (T, {"co2_ppm": {"count": 3, "min": 400, "max": 600, "mean": 500, "last": 500}})
    ]
    assert state.closed_until == at(60) and list(state.open) == [at(60)]


def test_boundaries_are_start_inclusive_end_exclusive() -> None:
    state = DeviceState()
    closed = feed(state, (0, 1), (60, 2))  # 60 s belongs to [T+60, T+120)
    closed += feed(state, (120, 3))  # watermark 110 s: [T, T+60) closes
    closed += feed(state, (200, 4))  # watermark 190 s: the next two close
    assert [(s - T, m["co2_ppm"]["count"]) for s, m in closed] == [
        (0, 1),
        (60_000, 1),
        (120_000, 1),
    ]


def test_out_of_order_within_grace_lands_in_its_window() -> None:
    state = DeviceState()
    feed(state, (50, 10), (65, 20))  # watermark 55 s: [T, T+60) still open
    feed(state, (58, 30))  # 7 s out of order, within the grace
    closed = feed(state, (75, 40))  # watermark 65 s: [T, T+60) closes
    stats = closed[0][1]["co2_ppm"]
    assert (stats["count"], stats["last"]) == (2, 30)  # `last` is by event time, not arrival


def test_late_beyond_grace_is_reported_not_added() -> None:
    state = DeviceState()
    feed(state, (10, 1), (80, 2))  # watermark 70 s: [T, T+60) closed
    late, closed = add_reading(state, at(59), {"co2_ppm": 9.0}, at(81), SIZE, GRACE)
    assert (late, closed) == (True, [])


def test_each_device_has_its_own_watermark() -> None:
    current, backlog = DeviceState(), DeviceState()
    feed(current, (3600, 1))  # one device an hour ahead...
    assert feed(backlog, (0, 5), (30, 6)) == []  # ...does not make another's readings late
    assert [s for s, _ in feed(backlog, (75, 7))] == [T]


def test_idle_timer_closes_when_input_goes_quiet() -> None:
    state = DeviceState()
    feed(state, (30, 500))
    assert close_idle(state, at(65), SIZE, GRACE, IDLE) == []  # end + grace not reached
    closed = close_idle(state, at(70), SIZE, GRACE, IDLE)  # 70 s: end + grace, silent 40 s
    assert [(w.start, w.end) for w in closed] == [(T, T + SIZE)] and not state.open


def test_idle_timer_spares_a_device_that_is_still_uploading() -> None:
    state = DeviceState()
    # A backlog from an hour ago, arriving now: wall clock far past every window's end.
    add_reading(state, at(0), {"x": 1.0}, at(3600), SIZE, GRACE)
    assert close_idle(state, at(3605), SIZE, GRACE, IDLE) == []  # silent only 5 s
    # Silent 10 s, but its event time (0 s) plus 10 s is not past the window's end plus
    # the grace: the rest of the upload may still come.
    assert close_idle(state, at(3610), SIZE, GRACE, IDLE) == []
    assert close_idle(state, at(3669), SIZE, GRACE, IDLE) == []
    assert close_idle(state, at(3670), SIZE, GRACE, IDLE) != []  # 70 s: as in real time


def test_a_replay_behind_the_wall_clock_loses_nothing_to_the_idle_timer() -> None:
    # Event time an hour behind the wall clock, at twice its speed: a reading every 30 s
    # of event time arrives every 15 s, longer than IDLE, with the timer ticking between.
    state, late = DeviceState(), 0
    for i in range(40):
        is_late, _ = add_reading(state, at(i * 30), {"x": 1.0}, at(3600 + i * 15), SIZE, GRACE)
        late += is_late
        close_idle(state, at(3600 + i * 15 + 14), SIZE, GRACE, IDLE)
    assert late == 0


def test_idle_silence_counts_from_the_takeover() -> None:
    # The worker that held the device died; its successor took over at 200 s. The
    # device's backlog is still unread: silence counts from the takeover, not from the
    # last reading the dead worker saw.
    state = DeviceState()
    feed(state, (30, 500))
    assert close_idle(state, at(205), SIZE, GRACE, IDLE, since=at(200)) == []
    assert close_idle(state, at(210), SIZE, GRACE, IDLE, since=at(200)) != []


def test_several_metrics_are_aggregated_independently() -> None:
    state = DeviceState()
    add_reading(state, at(1), {"a": 1.0, "b": 10.0}, at(1), SIZE, GRACE)
    add_reading(state, at(2), {"a": 3.0}, at(2), SIZE, GRACE)
    _, closed = add_reading(state, at(80), {"a": 0.0}, at(80), SIZE, GRACE)
    metrics = device_window_record("d", "k", "D", "s", closed[0])["metrics"]
    assert metrics == {
        "a": {"count": 2, "min": 1.0, "max": 3.0, "mean": 2.0, "last": 3.0},
        "b": {"count": 1, "min": 10.0, "max": 10.0, "mean": 10.0, "last": 10.0},
    }


def test_state_round_trips_through_json() -> None:
    state = DeviceState()
    feed(state, (1, 5), (61, 6), (62, 7))
    again = DeviceState.from_json(state.to_json())
    assert feed(again, (200, 1)) == feed(state, (200, 1))


# --- district windows (5 minutes) ----------------------------------------------------------
DSIZE, WAIT = 300_000, 30_000


def device_window(state: DeviceState, second: float, value: float) -> Closed:
    add_reading(state, at(second), {"co2_ppm": value}, 0, SIZE, GRACE)
    return close_idle(state, 10**15, SIZE, GRACE, 0)[0]


def test_district_window_closes_when_every_registered_device_moved_past_it() -> None:
    district = DistrictState()
    devices = {"a": DeviceState(), "b": DeviceState()}
    for name, value in (("a", 400.0), ("b", 800.0)):
        start, end, aggs = device_window(devices[name], 290, value)  # last minute of [T, T+300)
        add_device_window(district, name, start, end, aggs, at(301), DSIZE)
    # Both devices delivered their window ending at T+300 s: the district window closes now.
    closed = close_districts(district, at(302), DSIZE, GRACE, WAIT, {"a", "b"})
    record = district_window_record("Mitte", "classroom_air", closed[0][0], DSIZE, closed[0][1])
    assert (record["devices"], record["metrics"]["co2_ppm"]["mean"]) == (2, 600.0)


def test_district_window_waits_for_a_registered_device_then_times_out() -> None:
    district = DistrictState()
    start, end, aggs = device_window(DeviceState(), 100, 500.0)
    add_device_window(district, "a", start, end, aggs, at(111), DSIZE)
    registered = {"a", "b"}  # b never reports
    assert close_districts(district, at(300 + 10 + 29), DSIZE, GRACE, WAIT, registered) == []
    # 30 s (WAIT) after end + grace, and after the first arrival: closed without b.
    assert len(close_districts(district, at(300 + 10 + 30), DSIZE, GRACE, WAIT, registered)) == 1
    late = add_device_window(district, "b", start, end, aggs, at(400), DSIZE)
    assert late is False


def test_backlog_district_window_waits_from_its_first_arrival() -> None:
    district = DistrictState()
    start, end, aggs = device_window(DeviceState(), 5, 1.0)
    now = at(7200)  # replayed two hours later
    add_device_window(district, "a", start, end, aggs, now, DSIZE)
    assert close_districts(district, now + WAIT - 1, DSIZE, GRACE, WAIT, {"a", "b"}) == []
    assert close_districts(district, now + WAIT, DSIZE, GRACE, WAIT, {"a", "b"}) != []


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_p95_is_within_one_percent_of_nearest_rank(seed: int) -> None:
    rng = random.Random(seed)
    values = [rng.choice([-1, 1]) * rng.lognormvariate(3, 2) for _ in range(5000)] + [0.0] * 50
    sketch: dict[int, int] = {}
    sketch_add(sketch, values)
    exact = sorted(values)[math.ceil(0.95 * len(values)) - 1]
    assert sketch_quantile(sketch, 0.95) == pytest.approx(exact, rel=0.01)


def test_district_state_round_trips_through_json() -> None:
    district = DistrictState()
    start, end, aggs = device_window(DeviceState(), 5, 3.5)
    add_device_window(district, "a", start, end, aggs, at(70), DSIZE)
    again = DistrictState.from_json(district.to_json())
    one = close_districts(district, at(10**6), DSIZE, GRACE, WAIT, None)
    two = close_districts(again, at(10**6), DSIZE, GRACE, WAIT, None)
    assert district_window_record("D", "k", one[0][0], DSIZE, one[0][1]) == district_window_record(
        "D", "k", two[0][0], DSIZE, two[0][1]
    )


def test_a_device_window_delivered_twice_counts_once() -> None:
    district = DistrictState()
    start, end, aggs = device_window(DeviceState(), 5, 2.0)
    for _ in range(2):  # redelivered after a crash
        add_device_window(district, "a", start, end, aggs, at(70), DSIZE)
    closed = close_districts(district, at(10**6), DSIZE, GRACE, WAIT, None)
    record = district_window_record("D", "k", closed[0][0], DSIZE, closed[0][1])
    assert record["metrics"]["co2_ppm"]["count"] == 1


def test_state_and_device_windows_of_the_previous_aggregate_format_are_read() -> None:
    # Before: [count, min, max, sum, last_ts, last, values] per metric
    co2 = [2, 400.0, 600.0, 1000.0, at(30), 600.0, [400.0, 600.0]]
    old = [at(30), 0, at(30), [[T, {"co2_ppm": co2}]], -1, "0", [-1, -1]]
    state = DeviceState.from_json(old)
    assert feed(state, (45, 500), (70, 1)) == [
        (T, {"co2_ppm": {"count": 3, "min": 400, "max": 600, "mean": 500, "last": 500}})
    ]
    district = DistrictState()
    aggs = {"co2_ppm": [2, 1.0, 3.0, 4.0, at(5), 3.0, [1.0, 3.0]]}
    assert add_device_window(district, "a", T, T + SIZE, aggs, at(70), DSIZE)
    record = district_window_record("D", "k", T, DSIZE, district.open[T])
    stats = {"count": 2, "min": 1.0, "max": 3.0, "mean": 2.0, "p95": pytest.approx(3.0, 0.01)}
    assert record["metrics"]["co2_ppm"] == stats
