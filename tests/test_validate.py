"""Validation of untrusted telemetry: every example, every reason, and fuzzing."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.stages.validate import (
    INVALID_JSON,
    INVALID_UTF8,
    SCHEMA,
    TOO_LARGE,
    TS_FUTURE,
    TS_PAST,
    Limits,
    parse_message,
)

EXAMPLES = Path(__file__).parents[1] / "schemas" / "examples"
NOW = 1795780800000  # 2026-11-27T12:00:00Z, the examples' era
# Example files carry fixed times: the clock checks are tested separately below.
# ...and the size limit too: a 1,000-reading batch is schema-valid but may exceed
# the default 64 KiB message limit, which is an operational setting, not the schema.
NO_CLOCK = Limits(max_bytes=2**20, max_future_ms=10**15, max_past_ms=10**15)


def examples(kind: str, schema: str) -> list[Path]:
    return sorted((EXAMPLES / kind / schema).glob("*.json"))


def envelope(**overrides: object) -> bytes:
    doc: dict[str, object] = {
        "device_id": "dui-mitte-gs017-r12-air",
        "ts": NOW,
        "seq": 1,
        "metrics": {"co2_ppm": 812.0},
    }
    doc.update(overrides)
    return orjson.dumps(doc)


@pytest.mark.parametrize("path", examples("valid", "telemetry-envelope"), ids=lambda p: p.stem)
def test_valid_envelopes_pass(path: Path) -> None:
    readings, rejects, batch = parse_message(path.read_bytes(), NOW, NO_CLOCK)
    assert (len(readings), rejects, batch) == (1, [], False)


@pytest.mark.parametrize("path", examples("valid", "telemetry-batch"), ids=lambda p: p.stem)
def test_valid_batches_pass_whole(path: Path) -> None:
    doc = orjson.loads(path.read_bytes())
    readings, rejects, batch = parse_message(path.read_bytes(), NOW, NO_CLOCK)
    assert (len(readings), rejects, batch) == (len(doc["readings"]), [], True)


@pytest.mark.parametrize(
    "path",
    # A batch is not an envelope, but the topic carries both: that example is valid here.
    [p for p in examples("invalid", "telemetry-envelope") if p.stem != "batch-is-not-an-envelope"]
    + examples("invalid", "telemetry-batch"),
    ids=lambda p: f"{p.parent.name}/{p.stem}",
)
def test_invalid_examples_are_rejected_with_schema(path: Path) -> None:
    rejects = parse_message(path.read_bytes(), NOW, NO_CLOCK).rejects
    assert rejects, "an invalid example must produce a dead letter"
    assert {r.reason for r in rejects} == {SCHEMA}
    assert all(r.detail for r in rejects)


def test_one_bad_reading_rejects_only_itself() -> None:
    good = orjson.loads(envelope())
    bad = orjson.loads(envelope(metrics={"co2_ppm": "high"}))
    message = orjson.dumps({"readings": [good, bad, good | {"seq": 2}]})
    readings, rejects, batch = parse_message(message, NOW, Limits())
    assert batch and [r.seq for r in readings] == [1, 2]
    assert [(r.reason, r.position) for r in rejects] == [(SCHEMA, 1)]
    assert orjson.loads(rejects[0].payload) == bad  # the reading alone, not the batch


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", INVALID_JSON),
        (None, INVALID_JSON),
        (b"{not json", INVALID_JSON),
        (b'{"device_id": "a", "ts": 1, "metrics": {"x": NaN}}', INVALID_JSON),
        (b'{"device_id": "a", "ts": 1, "metrics": {"x": 1e999}}', INVALID_JSON),
        (b"[" * 60_000, INVALID_JSON),  # nesting depth 60,000
        (b'{"device_id": "\xff\xfe"}', INVALID_UTF8),
        (b"\x00\x01\x02binary", INVALID_JSON),
        (b"x" * 70_000, TOO_LARGE),
        (envelope(metrics={"x": 1e300}), SCHEMA),  # finite but absurd
        (envelope(device_id="dui‮evil"), SCHEMA),  # bidi override in an id
        (envelope(device_id="a\nb"), SCHEMA),
        (envelope(seq=True), SCHEMA),
        (envelope(metrics={"x": True}), SCHEMA),
        (envelope(ts=NOW + 301_000), TS_FUTURE),
        (envelope(ts=NOW - 86_401_000), TS_PAST),
        (envelope(ts="2026-11-25T11:59:58Z"), TS_PAST),
    ],
)
def test_each_problem_has_its_reason(payload: bytes | None, reason: str) -> None:
    readings, rejects, _ = parse_message(payload, NOW, Limits())
    assert readings == []
    assert [r.reason for r in rejects] == [reason]


def test_clock_limits_are_configurable() -> None:
    ahead = envelope(ts=NOW + 60_000)
    assert parse_message(ahead, NOW, Limits(max_future_ms=30_000)).rejects[0].reason == TS_FUTURE
    assert parse_message(ahead, NOW, Limits(max_future_ms=120_000)).rejects == []


def test_rfc3339_and_epoch_agree() -> None:
    a = parse_message(envelope(ts="2026-11-27T13:00:00.123+01:00"), NOW, Limits()).readings
    b = parse_message(envelope(ts=NOW + 123), NOW, Limits()).readings
    assert a[0].ts == b[0].ts == NOW + 123


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes_never_raise(data: bytes) -> None:
    readings, rejects, _ = parse_message(data, NOW, Limits())
    assert len(readings) + len(rejects) >= 1


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=30,
)


@settings(max_examples=500, deadline=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "device_id": json_values | st.from_regex(r"[A-Za-z0-9_.:-]{1,64}", fullmatch=True),
            "ts": json_values | st.integers(NOW - 10**9, NOW + 10**9),
            "seq": json_values,
            "metrics": json_values | st.dictionaries(st.text(max_size=8), st.floats(), max_size=5),
            "readings": json_values,
        },
    )
)
def test_random_documents_never_raise(doc: dict[str, object]) -> None:
    readings, rejects, _ = parse_message(orjson.dumps(doc), NOW, Limits())
    assert len(readings) + len(rejects) >= 1
