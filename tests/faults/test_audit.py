"""The auditor can fail: given outputs with a loss, a double count, a wrong value or a
repeat, it counts each (no broker, fast)."""

from __future__ import annotations

import copy
from typing import Any

from streams.stages.rules import parse_rules
from tests.faults.audit import Audit, Reading, audit, expected_alerts
from tests.faults.harness import RULES, fleet

T = 1_795_780_800_000
DEVICES = fleet(4)
RULESET = parse_rules(RULES, "rules")


def ledger() -> list[Reading]:
    return [
        Reading(str(d["device_id"]), seq, T + seq * 2_000, {"co2_ppm": co2})
        for d in DEVICES
        for seq, co2 in enumerate([700.0, 1600.0, 1650.0, 1100.0, 800.0, 900.0], start=1)
    ]


def outputs() -> dict[str, list[dict[str, Any]]]:
    """What a correct pipeline writes, built by hand (window 10 s, district 30 s)."""
    device, enriched = [], []
    for d in DEVICES:
        dev = str(d["device_id"])
        for start, values in ((T, [700.0, 1600.0, 1650.0, 1100.0]), (T + 10_000, [800.0, 900.0])):
            device.append(
                {
                    "device_id": dev,
                    "window_start": start,
                    "metrics": {
                        "co2_ppm": {
                            "count": len(values),
                            "min": min(values),
                            "max": max(values),
                            "mean": sum(values) / len(values),
                            "last": values[-1],
                        }
                    },
                }
            )
        enriched += [{"device_id": dev, "seq": s} for s in range(1, 7)]
    district = []
    for name in sorted({str(d["district"]) for d in DEVICES}):
        members = [d for d in DEVICES if d["district"] == name]
        values = [700.0, 1600.0, 1650.0, 1100.0, 800.0, 900.0] * len(members)
        district.append(
            {
                "district": name,
                "kind": "classroom_air",
                "window_start": T,
                "devices": len(members),
                "metrics": {
                    "co2_ppm": {
                        "count": len(values),
                        "min": 700.0,
                        "max": 1650.0,
                        "mean": sum(values) / len(values),
                        "p95": 1650.0,
                    }
                },
            }
        )
    # Alert events come from the rule engine (their ids hash device, rule and start).
    alerts = expected_alerts(ledger(), DEVICES, RULESET)
    assert [e["status"] for e in alerts] == ["firing", "resolved"] * len(DEVICES)
    return {"enriched": enriched, "device": device, "district": district, "alerts": alerts}


def run(out: dict[str, list[dict[str, Any]]]) -> Audit:
    return audit(ledger(), DEVICES, RULESET, 10_000, 30_000, out)


def test_correct_outputs_are_clean() -> None:
    result = run(outputs())
    assert result.clean and result.duplicated == 0, result.summary()


def test_each_kind_of_fault_is_counted() -> None:
    out = outputs()
    out["enriched"].pop()  # a reading lost
    out["device"][0]["metrics"]["co2_ppm"]["count"] += 1  # a window double-counted
    out["device"][1]["metrics"]["co2_ppm"]["max"] = 1.0  # a wrong value
    out["device"].append(copy.deepcopy(out["device"][2]))  # an identical repeat
    out["district"].pop()  # a district window lost
    out["alerts"].pop(0)  # an alert event lost
    result = run(out)
    assert result.readings.lost == 1
    assert result.device_windows.double_counted == 1
    assert result.device_windows.wrong == 1
    assert result.device_windows.duplicated == 1
    assert result.district_windows.lost == 1
    assert result.alerts.lost == 1
    assert not result.clean


def test_a_lost_reading_says_whether_it_was_sent_twice() -> None:
    out = outputs()
    lost = [out["enriched"].pop(), out["enriched"].pop(0)]
    twice = {(str(lost[0]["device_id"]), int(lost[0]["seq"]))}
    result = audit(ledger(), DEVICES, RULESET, 10_000, 30_000, out, repeated=twice)
    assert result.readings.lost == 2
    said = sorted(result.readings.examples)
    assert said == sorted(
        f"lost: {e['device_id']} seq {e['seq']} (not dead-lettered either, {how})"
        for e, how in zip(lost, ["sent twice", "sent once"], strict=True)
    )
