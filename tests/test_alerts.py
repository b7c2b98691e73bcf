"""The rule engine with explicit event times. T is an aligned minute; ``at(m)`` is T plus
m minutes. The rules are the shipped defaults unless a test writes its own."""

from __future__ import annotations

from typing import Any

import pytest

from streams.devices import KINDS
from streams.stages.alerts import AlertState, decode_alerts, encode_alerts, evaluate
from streams.stages.enrich import Device
from streams.stages.rules import Rule, RulesError, load_rules, parse_rules

T = 1_795_780_800_000  # 2026-11-27T12:00:00Z (13:00 in Duisburg, a Friday)
ROOM = Device("dui-mitte-gs017-r12-air", "classroom_air", "Mitte", "gs017", None, None, None, 60)
RULES = load_rules().for_kind("classroom_air")


def at(minutes: float) -> int:
    return T + int(minutes * 60_000)


def run(
    state: AlertState, series: list[tuple[float, float]], rules: tuple[Rule, ...] = RULES
) -> list[dict[str, Any]]:
    """(minute, co2) readings through the rules; returns the alert events."""
    out: list[dict[str, Any]] = []
    for minute, co2 in series:
        evaluate(state, rules, ROOM, at(minute), {"co2_ppm": co2}, out)
    return out


def brief(events: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(e["status"], e["rule"], e["severity"]) for e in events]


def test_for_duration_then_one_firing_and_one_resolved() -> None:
    state = AlertState()
    assert run(state, [(m, 1200) for m in range(5)]) == []  # above 1000 for 4 min: pending
    fired = run(state, [(5, 1200)])  # 5 min after the first high reading: fires
    assert brief(fired) == [("firing", "classroom_co2_high", "warning")]
    assert fired[0]["starts_at"] == at(0) and fired[0]["ends_at"] is None
    assert run(state, [(6, 1100), (7, 950), (8, 850)]) == []  # 950: above clear, still on
    resolved = run(state, [(9, 800)])  # below 900 for 1 min (clear_for): resolves
    assert brief(resolved) == [("resolved", "classroom_co2_high", "warning")]
    assert resolved[0]["alert_id"] == fired[0]["alert_id"]
    assert resolved[0]["ends_at"] == at(9)


def test_a_dip_while_pending_starts_the_wait_again() -> None:
    state = AlertState()
    series = [
        (0, 1200),
        (1, 1200),
        (2, 1200),
        (3, 1200),
        (4, 990),
        *((m, 1200) for m in range(5, 10)),
    ]
    assert run(state, series) == []
    assert brief(run(state, [(10, 1200)])) == [("firing", "classroom_co2_high", "warning")]


def test_a_gap_in_the_data_does_not_complete_for() -> None:
    state = AlertState()  # 3 min above 1000 ppm, an hour without data, 3 min above again
    series = [(m, 1200) for m in range(4)] + [(60 + m, 1200) for m in range(4)]
    assert run(state, series) == []
    assert brief(run(state, [(65, 1200)])) == [("firing", "classroom_co2_high", "warning")]


def test_a_gap_in_the_data_does_not_complete_clear_for() -> None:
    state = AlertState()
    assert brief(run(state, [(m, 1200) for m in range(6)]))[0][0] == "firing"
    assert run(state, [(6, 850), (30, 850)]) == []  # below 900, but 24 min without data
    assert brief(run(state, [(31, 850)])) == [("resolved", "classroom_co2_high", "warning")]


def test_without_a_heartbeat_the_gap_is_judged_by_the_learned_cadence() -> None:
    room = Device(
        "dui-mitte-gs017-r13-air", "classroom_air", "Mitte", "gs017", None, None, None, None
    )
    state, out = AlertState(), []
    for minute in [*range(4), *range(60, 64)]:  # cadence learned: 1 min; then an hour away
        evaluate(state, RULES, room, at(minute), {"co2_ppm": 1200.0}, out)
    assert out == [] and state.gaps == 6  # the hour taught the cadence nothing
    assert state.max_gap(room, 3.0) == 180_000


def test_hysteresis_a_value_hovering_at_the_threshold_does_not_flap() -> None:
    state = AlertState()
    events = run(state, [(m, 1200) for m in range(6)])
    hover = [(6 + i / 2, 1010 if i % 2 else 990) for i in range(40)]  # 20 min at 990..1010
    assert run(state, hover) == []
    assert len(events) == 1


def test_escalation_is_an_update_of_the_same_episode() -> None:
    state = AlertState()
    high = run(state, [(m, 1500) for m in range(6)])
    # 2500 from minute 6: the critical rule holds from 6, is due at 11.
    assert run(state, [(m, 2500) for m in range(6, 11)]) == []
    critical = run(state, [(11, 2500)])
    assert brief(critical) == [("firing", "classroom_co2_critical", "critical")]
    assert critical[0]["alert_id"] == high[0]["alert_id"]
    # Below 1800 for a minute: back to warning, same episode; then resolved.
    back = run(state, [(12, 1500), (13, 1500)])
    assert brief(back) == [("firing", "classroom_co2_high", "warning")]
    done = run(state, [(14, 600), (15, 600)])
    assert brief(done) == [("resolved", "classroom_co2_high", "warning")]
    assert {e["alert_id"] for e in high + critical + back + done} == {high[0]["alert_id"]}


def test_straight_to_critical_opens_one_critical_episode() -> None:
    state = AlertState()
    events = run(state, [(m, 2600) for m in range(6)])
    assert brief(events) == [("firing", "classroom_co2_critical", "critical")]


def test_restart_in_the_middle_of_an_episode() -> None:
    state = AlertState()
    fired = run(state, [(m, 1300) for m in range(6)])
    state = decode_alerts(encode_alerts(state))  # what a new worker loads
    assert run(state, [(6, 1300)]) == []  # no second firing
    resolved = run(state, [(7, 500), (8, 500)])
    assert brief(resolved) == [("resolved", "classroom_co2_high", "warning")]
    assert resolved[0]["alert_id"] == fired[0]["alert_id"]


def test_the_same_readings_again_give_the_same_alert_id() -> None:
    series = [(m, 1300) for m in range(6)]
    assert run(AlertState(), series)[0]["alert_id"] == run(AlertState(), series)[0]["alert_id"]


def test_older_readings_do_not_move_a_rule_back() -> None:
    state = AlertState()
    run(state, [(m, 1300) for m in range(6)])
    assert run(state, [(2, 500), (3, 500)]) == []  # out of order: ignored by the rules


RULE = """
[[rule]]
name = "{name}"
kind = "{kind}"
metric = "{metric}"
condition = "{condition}"
threshold = {threshold}
severity = "warning"
summary = "{{device_id}} {{value}}"
{extra}
"""


def rule_text(**kw: Any) -> str:
    """One [[rule]] table: a machine rule on metric v above 1, with ``kw`` changed."""
    fields = {"name": "r", "kind": "machine", "metric": "v", "condition": "above"}
    return RULE.format(**(fields | {"threshold": 1.0, "extra": ""} | kw))


def rules(**kw: Any) -> tuple[Rule, ...]:
    return parse_rules(rule_text(**kw)).rules


MACHINE = Device("dui-hamborn-ind1-m001", "machine", "Hamborn", "ind1", None, None, None, 10)


def feed(rs: tuple[Rule, ...], series: list[tuple[float, dict[str, float]]]) -> list[str]:
    state, out = AlertState(), []
    for minute, metrics in series:
        evaluate(state, rs, MACHINE, at(minute), metrics, out)
    return [f"{e['status']}@{round((e['at'] - T) / 60_000, 3):g}" for e in out]


def test_relative_to_and_outside_a_reefer_set_point() -> None:
    rs = rules(metric="temp", condition="outside", threshold=2.0, extra='relative_to = "set"')
    series = [(0, {"temp": -18.0, "set": -18.0}), (1, {"temp": -15.5, "set": -18.0})]
    series += [(2, {"temp": -20.5, "set": -18.0}), (3, {"temp": -18.2, "set": -18.0})]
    assert feed(rs, series) == ["firing@1", "resolved@3"]


def test_mean_over_an_hour() -> None:
    rs = rules(metric="no2", threshold=200.0, extra='mean_over = "1h"')
    # 600s after half an hour of 150s: the hourly mean passes 200 with the 4th 600
    # (minute 33: (30 * 150 + 4 * 600) / 34 = 202.9; minute 32: 195.5).
    series = [(m, {"no2": 150.0}) for m in range(0, 30)]
    series += [(m, {"no2": 600.0}) for m in range(30, 36)]
    assert feed(rs, series) == ["firing@33"]


def test_rate_of_change_per_minute() -> None:
    rs = rules(metric="t", condition="rate_above", threshold=1.0)
    series = [(0, {"t": 4.0}), (1, {"t": 4.5}), (2, {"t": 6.0}), (3, {"t": 6.1})]
    assert feed(rs, series) == ["firing@2", "resolved@3"]


def test_band_learned_per_device() -> None:
    rs = rules(condition="band", threshold=4.0, extra="min_samples = 20\nalpha = 0.1")
    normal = [(i / 10, {"v": 5.0 + (0.2 if i % 2 else -0.2)}) for i in range(40)]
    spike = [(4.0, {"v": 9.0}), (4.1, {"v": 5.0})]
    assert feed(rs, normal + spike) == ["firing@4", "resolved@4.1"]


def test_schedule_school_hours_in_the_citys_time_zone() -> None:
    extra = 'schedule = {days = "mon-fri", hours = "07:30-13:00", tz = "Europe/Berlin"}'
    rs = rules(extra=extra)
    # T is 13:00 in Berlin on a Friday: outside; one minute before, inside.
    assert feed(rs, [(-1, {"v": 2.0})]) == ["firing@-1"]
    assert feed(rs, [(0, {"v": 2.0})]) == []


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("[[rule]]\nname = 'x'", "kind is required"),
        (
            rule_text(name="a", kind="toaster"),
            "kind 'toaster'",
        ),
        (
            rule_text(name="a", condition="near"),
            "condition 'near'",
        ),
        (
            rule_text(name="a", extra="clear = 2"),
            "clear 2.0 must not be above",
        ),
        (
            rule_text(name="a", extra='for = "5 minutes"'),
            "not a duration",
        ),
        (
            rule_text(name="a", extra='escalates = "b"'),
            "escalates 'b'",
        ),
        (
            rule_text(name="a", extra="colour = 3"),
            "unknown keys ['colour']",
        ),
        ("[[rule]\nname = 1", "line 1"),
    ],
)
def test_invalid_rule_files_are_refused_with_line_and_reason(text: str, error: str) -> None:
    with pytest.raises(RulesError) as info:
        parse_rules(text, "rules.toml")
    assert error in str(info.value)
    assert str(info.value).startswith("rules.toml")


def test_an_error_names_the_line_of_its_rule() -> None:
    good = rule_text(name="a")
    bad = rule_text(name="b", extra='severity2 = "x"')
    with pytest.raises(ValueError, match=r"^rules.toml:12 \(b\): unknown keys"):
        parse_rules(good + bad, "rules.toml")


def test_a_summary_with_an_unknown_field_is_refused() -> None:
    text = rule_text(name="a")
    with pytest.raises(ValueError, match="summary"):
        parse_rules(text.replace("{value}", "{room}"), "rules.toml")


def test_every_default_rule_kind_and_grounded_thresholds() -> None:
    defaults = {r.name: r for r in load_rules().rules}
    assert (defaults["classroom_co2_high"].threshold, defaults["classroom_co2_high"].for_ms) == (
        1000,
        300_000,
    )
    assert (
        defaults["classroom_co2_critical"].threshold,
        defaults["classroom_co2_critical"].severity,
    ) == (2000, "critical")
    assert (
        defaults["air_no2_hourly_limit"].threshold == 200
        and defaults["air_pm10_daily_limit"].threshold == 50
    )
    assert {r.kind for r in defaults.values()} == set(KINDS)


def test_occupancy_co2_alerts_only_while_the_access_point_has_clients() -> None:
    rs = rules(
        kind="classroom_air",
        metric="co2_ppm",
        threshold=1000.0,
        extra='occupancy = {metric = "clients", min = 1}',
    )
    room = ROOM._replace(parent="ap")

    def fired(latest: dict[str, dict[str, float]]) -> list[str]:
        state, out = AlertState(), []
        for minute in range(3):
            evaluate(state, rs, room, at(minute), {"co2_ppm": 1500.0}, out, latest)
        return [e["status"] for e in out]

    assert fired({"ap": {"clients": 0}}) == []  # an empty room: no alert
    assert fired({"ap": {"clients": 12}}) == ["firing"]
    assert fired({}) == ["firing"]  # unknown counts as occupied: never hide an alert by default


def test_a_heartbeat_shorter_than_the_event_time_cadence_does_not_block_for() -> None:
    # `up` publishes heartbeat_s divided by its speed-up (wall clock), while readings
    # are a minute apart in event time: the learned cadence decides.
    fast = Device("dui-mitte-gs017-r14-air", "classroom_air", "Mitte", "gs017", None, None, None, 6)
    state, out = AlertState(), []
    for minute in range(7):  # (its first gap, unlearned, is judged by the heartbeat)
        evaluate(state, RULES, fast, at(minute), {"co2_ppm": 1200.0}, out)
    assert brief(out) == [("firing", "classroom_co2_high", "warning")]
