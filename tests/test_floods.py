"""Alert floods grouped for people (streams/tools/floods.py): broker-free, with explicit times."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from streams.tools.backtest import describe_alert
from streams.tools.floods import AlertGroups
from tests.conftest import ROOT

T0 = 1_796_000_000_000  # event time of the first alert, epoch ms


def alert(
    device: str,
    *,
    rule: str = "classroom_co2_high",
    district: str = "Mitte",
    status: str = "firing",
    at: int = T0,
    **extra: Any,
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "alert_id": f"id-{device}-{rule}",
        "rule": rule,
        "status": status,
        "severity": "warning",
        "device_id": device,
        "kind": "classroom_air",
        "district": district,
        "summary": f"CO2 1100 ppm in {device}",
        "starts_at": at,
        "ends_at": at if status == "resolved" else None,
        "at": at,
    }
    record.update(extra)
    return record


def test_a_lone_alert_prints_after_the_span_as_a_line_of_its_own() -> None:
    groups = AlertGroups(span_s=30)
    one = alert("dui-mitte-gs017-r12-air")
    assert groups.add(one, now=100.0) == []
    assert groups.next_due() == 130.0
    assert groups.due(129.9) == []
    assert groups.due(130.0) == [describe_alert(one)]
    assert groups.held == 0 and groups.next_due() is None


def test_fifty_alerts_of_one_rule_and_district_within_the_span_are_one_line() -> None:
    groups = AlertGroups(span_s=30)
    lines: list[str] = []
    for i in range(50):
        lines += groups.add(alert(f"dui-mitte-r{i}-air", at=T0 + i * 5_000), now=100.0 + i * 0.5)
    assert lines == []
    lines = groups.due(130.0)
    assert len(lines) == 1
    line = lines[0]
    assert "FIRING" in line and "warning" in line and "classroom_co2_high" in line
    assert (
        "Mitte: 50 devices (dui-mitte-r0-air, dui-mitte-r1-air, dui-mitte-r2-air and 47 more)"
        in (line)
    )
    assert line.endswith("within 4m05s")


def test_two_districts_give_two_lines() -> None:
    groups = AlertGroups(span_s=30)
    for i in range(5):
        groups.add(alert(f"dui-mitte-r{i}-air"), now=100.0)
        groups.add(alert(f"dui-hamborn-r{i}-air", district="Hamborn"), now=101.0)
    (mitte,) = groups.due(130.0)
    (hamborn,) = groups.due(131.0)
    assert mitte.endswith(
        "Mitte: 5 devices (dui-mitte-r0-air, dui-mitte-r1-air, dui-mitte-r2-air and 2 more)"
    )
    assert "Hamborn: 5 devices" in hamborn
    assert groups.held == 0


def test_firing_and_resolved_are_grouped_apart_and_alike() -> None:
    groups = AlertGroups(span_s=30)
    for i in range(3):
        groups.add(alert(f"r{i}"), now=0.0)
        groups.add(alert(f"r{i + 10}", status="resolved"), now=0.0)
    lines = groups.due(30.0)
    assert [line.split()[2] for line in lines] == ["FIRING", "RESOLVED"]
    assert all("Mitte: 3 devices" in line for line in lines)


def test_an_alert_after_the_span_starts_the_next_group() -> None:
    groups = AlertGroups(span_s=30)
    groups.add(alert("a"), now=0.0)
    groups.add(alert("b"), now=10.0)
    assert len(groups.add(alert("c"), now=31.0)) == 1  # a and b, due at 30
    assert groups.due(60.0) == []
    assert groups.due(61.0) == [describe_alert(alert("c"))]


def test_ungrouped_prints_every_event_at_once() -> None:
    groups = AlertGroups(span_s=30, ungrouped=True)
    records = [alert(f"dui-mitte-r{i}-air") for i in range(50)]
    lines = [line for r in records for line in groups.add(r, now=100.0)]
    assert lines == [describe_alert(r) for r in records]
    assert groups.held == 0 and groups.flush() == []


def test_flush_prints_what_is_held() -> None:
    groups = AlertGroups(span_s=30)
    groups.add(alert("a"), now=0.0)
    groups.add(alert("b", rule="wlan_ap_overloaded"), now=1.0)
    assert len(groups.flush()) == 2
    assert groups.held == 0


def test_one_device_s_events_keep_their_own_lines() -> None:
    groups = AlertGroups(span_s=30)
    first, again = alert("a"), alert("a", at=T0 + 60_000)
    groups.add(first, now=0.0)
    groups.add(again, now=1.0)
    assert groups.due(30.0) == [describe_alert(first), describe_alert(again)]


def test_missing_fields_and_scope_counts_do_not_crash() -> None:
    groups = AlertGroups(span_s=30)
    groups.add({"rule": "district_scope", "status": "firing", "affected_count": 12}, now=0.0)
    groups.add({"rule": "district_scope", "status": "firing", "device_id": "x"}, now=0.0)
    groups.add({"status": "firing", "device_id": "y", "affected_children": 3}, now=0.0)
    groups.add({}, now=0.0)
    lines = groups.due(30.0)
    assert len(lines) == 3
    assert "district_scope" in lines[0] and "?: 2 devices (?, x)" in lines[0]
    assert lines[0].endswith("12 affected devices behind them")


def test_a_district_scope_alert_alone_is_its_own_line() -> None:
    path = ROOT / "schemas/examples/valid/alert/district-silent.json"
    if not path.exists():
        pytest.skip("the scope alert is not in this contract version")
    record = orjson.loads(path.read_bytes())
    groups = AlertGroups(span_s=30)
    groups.add(record, now=0.0)
    assert groups.due(30.0) == [describe_alert(record)]
