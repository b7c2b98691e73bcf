"""The pipeline's own record types and serialisers agree with the topic schemas.

``test_schemas.py`` checks the schemas against their examples; this checks the code
against the schemas, so a field added to a record type (or to a schema) without the
other fails here.
"""

from __future__ import annotations

import base64
from pathlib import Path

import orjson
import pytest

from streams.stages.deadletter import deadletter_record
from streams.stages.enrich import Device, enriched_record, unknown_device
from streams.stages.validate import INVALID_JSON, TOO_LARGE, Limits, Reading, Reject, parse_message
from tests.test_schemas import EXAMPLES, load_schema, validator

NOW = 1795780800000
LIMITS = Limits(max_bytes=2**20, max_future_ms=10**15, max_past_ms=10**15)
READING = Reading("dui-mitte-gs017-r12-air", 1795780800123, 42, {"co2_ppm": 812.0})
DEVICE = Device(
    device_id="dui-mitte-gs017-r12-air",
    kind="classroom_air",
    district="Mitte",
    site="gs017",
    lat=51.4325,
    lon=6.7652,
    parent="dui-mitte-gs017-ap1",
    heartbeat_s=60.0,
)
BARE_DEVICE = DEVICE._replace(kind="wlan_ap", parent=None, heartbeat_s=None)


def errors(name: str, record: bytes) -> list[str]:
    return [e.message for e in validator(name).iter_errors(orjson.loads(record))]


def test_reading_fields_are_the_envelope_properties() -> None:
    schema = load_schema("telemetry-envelope")
    assert set(Reading._fields) == set(schema["properties"])
    assert set(schema["required"]) == set(Reading._fields) - {"seq"}


def test_device_fields_are_the_device_properties() -> None:
    schema = load_schema("device")
    assert set(Device._fields) == set(schema["properties"])
    assert set(schema["required"]) <= set(Device._fields)


@pytest.mark.parametrize(
    ("reject", "key"),
    [
        (Reject(INVALID_JSON, "empty message (null value)", b""), None),
        (Reject(INVALID_JSON, "unexpected character", b"{nope", None), b"dui-mitte-gs017-r12-air"),
        (parse_message(b'{"readings": [{"ts": 1}]}', NOW, LIMITS).rejects[0], b"gw-1"),
        # a 1 MB message: its base64 would not fit a Kafka record (payload truncated)
        (Reject(TOO_LARGE, "too large", b"{" + b"x" * 1_000_000), None),
    ],
)
def test_deadletter_record_matches_its_schema(reject: Reject, key: bytes | None) -> None:
    record = deadletter_record(reject, "dev.telemetry.raw", 3, 1234, key, NOW + 999)
    assert errors("deadletter", record) == []
    assert set(orjson.loads(record)) >= set(load_schema("deadletter")["required"])


def test_a_huge_payload_is_truncated_with_its_length() -> None:
    payload = b"{" + bytes(range(256)) * 4000  # 1,024,001 bytes
    record = orjson.loads(deadletter_record(Reject(TOO_LARGE, "x", payload), "t", 0, 1, None, NOW))
    assert record["payload_bytes"] == len(payload)
    assert base64.b64decode(record["payload_b64"]) == payload[:65_536]
    small = orjson.loads(deadletter_record(Reject(TOO_LARGE, "x", b"{}"), "t", 0, 1, None, NOW))
    assert "payload_bytes" not in small and base64.b64decode(small["payload_b64"]) == b"{}"


@pytest.mark.parametrize(
    "device",
    [DEVICE, BARE_DEVICE, unknown_device(READING.device_id)],
    ids=["registered", "no-parent-no-heartbeat", "unknown"],
)
@pytest.mark.parametrize("seq", [42, None])
def test_enriched_record_matches_its_schema(device: Device, seq: int | None) -> None:
    record = enriched_record(READING._replace(seq=seq), device)
    assert errors("telemetry-enriched", record) == []
    assert set(orjson.loads(record)) == set(load_schema("telemetry-enriched")["properties"])


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(path, id=f"{path.parent.name}/{path.stem}")
        for kind in ("telemetry-envelope", "telemetry-batch")
        for path in sorted((EXAMPLES / "valid" / kind).glob("*.json"))
    ],
)
def test_valid_telemetry_examples_are_accepted_and_enrich_to_the_schema(path: Path) -> None:
    parsed = parse_message(path.read_bytes(), NOW, LIMITS)
    assert parsed.rejects == [] and parsed.readings
    for reading in parsed.readings:
        device = DEVICE._replace(device_id=reading.device_id)
        assert errors("telemetry-enriched", enriched_record(reading, device)) == []


def test_alert_events_of_rules_and_of_liveness_match_the_alert_schema() -> None:
    from streams.stages.alerts import AlertState, evaluate
    from streams.stages.enrich import Registry
    from streams.stages.liveness import Family, Liveness
    from streams.stages.rules import load_rules

    rules = load_rules().for_kind("classroom_air")
    state, events = AlertState(), []
    for minute in range(12):
        co2 = 2500.0 if minute < 7 else 500.0
        evaluate(state, rules, DEVICE, NOW + minute * 60_000, {"co2_ppm": co2}, events)
    assert [e["status"] for e in events] == ["firing", "resolved"]
    registry = Registry()
    registry.apply(
        b"ap",
        orjson.dumps(
            {
                "device_id": "ap",
                "kind": "wlan_ap",
                "district": "D",
                "site": "s",
                "lat": 51.0,
                "lon": 6.0,
                "heartbeat_s": 1,
            }
        ),
    )
    live, family = Liveness(registry), Family()
    live.heard(family, "ap", NOW, NOW, events)
    live.tick(family, NOW + 5000, 0, events)
    live.heard(family, "ap", NOW + 9000, NOW + 9000, events)
    assert [e["status"] for e in events[2:]] == ["firing", "resolved"]
    for event in events:
        assert errors("alert", orjson.dumps(event)) == [], event


def test_district_silent_events_match_the_alert_schema() -> None:
    from streams.stages.enrich import Registry
    from streams.stages.liveness import Family, Liveness

    registry = Registry()
    for i in range(12):
        doc = {"device_id": f"aq{i}", "kind": "air_quality", "district": "Meiderich/Beeck"}
        doc |= {"site": "s", "lat": 51.0, "lon": 6.0, "heartbeat_s": 1}
        registry.apply(f"aq{i}".encode(), orjson.dumps(doc))
    live, events = Liveness(registry), []
    families = {d: Family() for d in registry.devices}
    for root, family in families.items():
        live.track(root)
        live.heard(family, root, NOW, NOW, events)
    for now in (NOW + 5000, NOW + 6500):  # silent, then back (heard at NOW + 6000)
        judge = live.round(now, 0, families.get)
        for root, family in families.items():
            judge.family(root, family, events)
        judge.finish(events)
        for root, family in families.items():
            live.heard(family, root, NOW + 6000, NOW + 6000, [])
    assert [(e["rule"], e["status"]) for e in events] == [
        ("district_silent", "firing"),
        ("district_silent", "resolved"),
    ]
    for event in events:
        assert errors("alert", orjson.dumps(event)) == [], event
