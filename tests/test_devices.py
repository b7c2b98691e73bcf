"""The device registry: generated fleet, record checks, JSON Lines and CSV parsing."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.devices import (
    KINDS,
    check_device,
    count_by_kind,
    format_from_path,
    parse_device_file,
    to_jsonl,
)
from streams.tools.fleet import DISTRICT_NAMES, DISTRICTS, generate_fleet

ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
# No example database: the tests must not write into the working tree.
quick = settings(database=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow])

GOOD = {
    "device_id": "dui-mitte-gs017-r12-air",
    "kind": "classroom_air",
    "district": "Mitte",
    "site": "gs017",
    "lat": 51.4325,
    "lon": 6.7652,
    "parent": "dui-mitte-gs017-ap1",
    "heartbeat_s": 60,
}


@pytest.fixture(scope="module")
def fleet() -> list[dict[str, object]]:
    return generate_fleet()


@pytest.fixture(scope="module")
def tiny() -> list[dict[str, object]]:
    return generate_fleet(scale=0.01)


def test_same_seed_same_fleet() -> None:
    assert generate_fleet(7, 0.05) == generate_fleet(7, 0.05)
    assert generate_fleet(7, 0.05) != generate_fleet(8, 0.05)


def test_districts_are_the_seven_stadtbezirke() -> None:
    assert DISTRICT_NAMES == (
        "Walsum",
        "Hamborn",
        "Meiderich/Beeck",
        "Homberg/Ruhrort/Baerl",
        "Mitte",
        "Rheinhausen",
        "Süd",
    )
    assert all(d.slug.isascii() and 51.3 < d.lat < 51.6 and 6.6 < d.lon < 6.9 for d in DISTRICTS)


def test_fleet_size_at_scale_one(fleet: list[dict[str, object]]) -> None:
    assert 1500 <= len(fleet) <= 3000


@pytest.mark.parametrize("which", ["fleet", "tiny"])
def test_every_kind_and_district_present(which: str, request: pytest.FixtureRequest) -> None:
    devices = request.getfixturevalue(which)
    counts = count_by_kind(devices)
    assert set(counts) == set(KINDS)
    assert all(counts[kind] > 0 for kind in KINDS)
    assert {d["district"] for d in devices} == set(DISTRICT_NAMES)


def test_tiny_fleet_has_a_school_with_ap_and_classroom(tiny: list[dict[str, object]]) -> None:
    sites_with_ap = {d["site"] for d in tiny if d["kind"] == "wlan_ap"}
    assert any(d["kind"] == "classroom_air" and d["site"] in sites_with_ap for d in tiny)


@pytest.mark.parametrize("which", ["fleet", "tiny"])
def test_ids_parents_and_records_valid(which: str, request: pytest.FixtureRequest) -> None:
    devices = request.getfixturevalue(which)
    by_id = {d["device_id"]: d for d in devices}
    assert len(by_id) == len(devices)
    for device in devices:
        assert ID_RE.match(str(device["device_id"]))
        assert str(device["device_id"]).isascii()
        assert check_device(device) is None
        if "parent" in device:
            assert device["parent"] in by_id
        if device["kind"] == "classroom_air":
            parent = by_id[device["parent"]]
            assert parent["kind"] == "wlan_ap"
            assert parent["site"] == device["site"]


def test_jsonl_round_trip(fleet: list[dict[str, object]]) -> None:
    assert parse_device_file(to_jsonl(fleet), "jsonl") == (fleet, [])


def test_csv_bad_row_reported_good_rows_kept() -> None:
    data = (
        "device_id,kind,district,site,lat,lon,parent,heartbeat_s\n"
        "dui-sued-gs001-ap1,wlan_ap,Süd,gs001,51.36,6.76,,30\n"
        "dui-sued-x,tractor,Süd,gs001,51.36,6.76,,30\n"
        '"dui-sued-gs001-r3-air",classroom_air,Süd,gs001,51.36001,6.76,dui-sued-gs001-ap1,60\n'
    ).encode()
    records, errors = parse_device_file(data, "csv")
    assert len(errors) == 1
    assert errors[0].startswith("line 3: kind 'tractor' is not one of classroom_air")
    assert [r["device_id"] for r in records] == ["dui-sued-gs001-ap1", "dui-sued-gs001-r3-air"]
    assert records[0] == {
        "device_id": "dui-sued-gs001-ap1",
        "kind": "wlan_ap",
        "district": "Süd",
        "site": "gs001",
        "lat": 51.36,
        "lon": 6.76,
        "heartbeat_s": 30,
    }
    assert records[1]["parent"] == "dui-sued-gs001-ap1"


def test_csv_header_without_required_columns() -> None:
    records, errors = parse_device_file(b"device_id;kind;district\nx;wlan_ap;Mitte\n", "csv")
    assert records == []
    assert errors == [
        "line 1: header lacks column(s): device_id, kind, district, site, lat, lon "
        "(the file must be comma-separated)"
    ]


def test_tombstone_line() -> None:
    data = to_jsonl([GOOD]) + b'{"device_id": "dui-mitte-gs017-ap1", "deleted": true}\n'
    records, errors = parse_device_file(data, "jsonl")
    assert errors == []
    assert records == [GOOD, {"device_id": "dui-mitte-gs017-ap1", "deleted": True}]


def test_bad_lines_reported_with_line_numbers() -> None:
    lines = [
        json.dumps(GOOD).encode(),
        b"",
        b"\xff\xfe not utf-8",
        b"{not json",
        b"[1, 2]",
        json.dumps({**GOOD, "device_id": "bad id"}).encode(),
        json.dumps({**GOOD, "device_id": "dui-mitte-gs017-r12-air"}).encode(),
        json.dumps({"device_id": "x", "deleted": "yes"}).encode(),
    ]
    records, errors = parse_device_file(b"\n".join(lines), "jsonl")
    assert records == [GOOD]
    assert [e.split(":")[0] for e in errors] == [f"line {n}" for n in (3, 4, 5, 6, 7, 8)]
    assert "not valid UTF-8" in errors[0]
    assert "invalid JSON" in errors[1]
    assert "expected a JSON object, got array" in errors[2]
    assert "duplicate device_id" in errors[4] and "first on line 1" in errors[4]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"lat": None}, "lat must be a number"),
        ({"lat": 91.0}, "lat 91.0 is out of range -90..90"),
        ({"lon": True}, "lon must be a number, got true"),
        ({"heartbeat_s": 0}, "heartbeat_s must be positive, got 0"),
        ({"heartbeat_s": "60"}, "heartbeat_s must be a number"),
        ({"device_id": "ä" * 3}, "device_id 'äää' does not match"),
        ({"device_id": "a" * 65}, "does not match"),
        ({"district": ""}, "district must be a non-empty string"),
        ({"parent": "dui-mitte-gs017-r12-air"}, "is the device itself"),
        ({"kind": "tractor"}, "kind 'tractor' is not one of classroom_air, wlan_ap"),
    ],
)
def test_check_device_rejects(change: dict[str, object], expected: str) -> None:
    problem = check_device({**GOOD, **change})
    assert problem is not None
    assert expected in problem


def test_check_device_accepts_minimal_and_null_optionals() -> None:
    minimal = {k: v for k, v in GOOD.items() if k not in ("parent", "heartbeat_s")}
    assert check_device(minimal) is None
    assert check_device({**GOOD, "parent": None, "heartbeat_s": None, "vendor": "x"}) is None
    assert check_device({"device_id": "x"}) == (
        "missing required field(s): kind, district, site, lat, lon"
    )
    assert check_device("x") == "expected a JSON object, got string"


def test_count_by_kind_and_format_from_path() -> None:
    counts = count_by_kind([GOOD, GOOD, {"device_id": "x", "deleted": True}])
    assert counts["classroom_air"] == 2 and counts["machine"] == 0
    assert format_from_path("/tmp/devices.CSV") == "csv"
    assert format_from_path("devices.jsonl") == "jsonl"
    assert format_from_path("devices") == "jsonl"


def _assert_well_formed(data: bytes, fmt: str) -> None:
    records, errors = parse_device_file(data, fmt)
    assert all(re.match(r"line \d+: ", e) and "\n" not in e for e in errors)
    # Whatever was accepted can be published and reads back the same.
    assert parse_device_file(to_jsonl(records), "jsonl") == (records, [])


@quick
@given(st.binary(), st.sampled_from(["jsonl", "csv"]))
def test_garbage_bytes_never_raise(data: bytes, fmt: str) -> None:
    _assert_well_formed(data, fmt)


_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=70),
    st.sampled_from([*KINDS, "dui-a", "Mitte", "51.4"]),
)


@quick
@given(
    st.lists(
        st.dictionaries(
            st.sampled_from([*GOOD, "deleted", "extra"]), _values, max_size=len(GOOD) + 2
        ),
        max_size=5,
    )
)
def test_json_like_lines_never_raise(objects: list[dict[str, object]]) -> None:
    data = b"\n".join(json.dumps(obj).encode() for obj in objects)
    _assert_well_formed(data, "jsonl")
    csv_like = "device_id,kind,district,site,lat,lon,deleted\n" + "\n".join(
        ",".join(str(v) for v in obj.values()) for obj in objects
    )
    _assert_well_formed(csv_like.encode(), "csv")
