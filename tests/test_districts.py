"""The district stage without a network: batches of closed device windows, and what
the stage makes of them."""

from __future__ import annotations

import orjson
from prometheus_client import CollectorRegistry

from streams.districts import DistrictBatches, DistrictOutbox, Districts
from streams.enrich import Device, Registry, unknown_device
from streams.ingest import DictStore
from streams.metrics import Metrics
from streams.routing import key_partition
from streams.windows import Closed, DeviceState, DistrictState, add_reading

MINUTE = 60_000
DISTRICT = 300_000
T0 = 1795780800000  # a district window's start
PARTITIONS = 6


def device(n: int, district: str = "Mitte", kind: str = "classroom_air") -> Device:
    return Device(
        f"dui-{district.lower()}-gs001-r{n:02d}-air",
        kind,
        district,
        "gs001",
        None,
        None,
        None,
        None,
    )


def closed_window(minute: int, co2: float) -> Closed:
    """The window a device closes at ``T0 + minute`` min, holding one reading."""
    state = DeviceState()
    ts = T0 + minute * MINUTE
    add_reading(state, ts, {"co2_ppm": co2}, ts, MINUTE, 0)
    _, closed = add_reading(state, ts + MINUTE, {"co2_ppm": co2}, ts + MINUTE, MINUTE, 0)
    return closed[0]


def stage() -> tuple[Districts, Metrics]:
    metrics = Metrics(CollectorRegistry())
    districts = Districts(
        states=DictStore[DistrictState](),
        registry=Registry(),
        metrics=metrics,
        district_size_ms=DISTRICT,
        grace_ms=0,
        wait_ms=0,
    )
    return districts, metrics


def closed_districts(districts: Districts) -> list[dict[str, object]]:
    out = DistrictOutbox()
    districts.tick(T0 + 10 * DISTRICT, out)
    return sorted((orjson.loads(v) for _, v in out.records), key=lambda r: r["district"])


def test_batches_go_to_their_keys_partition_in_order() -> None:
    batches = DistrictBatches(PARTITIONS, MINUTE)
    for minute, district in [(0, "Mitte"), (1, "Hamborn"), (2, "Mitte"), (3, "Walsum")]:
        assert batches.add(device(minute, district), closed_window(minute, 700.0)) is None
    taken = batches.take()
    assert not batches and batches.take() == []
    seen = {}
    for partition, value in taken:
        for key, windows in orjson.loads(value).items():
            assert partition == key_partition(key.encode(), PARTITIONS)
            seen[key] = [w[1] for w in windows]
    assert seen == {
        '["Mitte","classroom_air"]': [T0, T0 + 2 * MINUTE],
        '["Hamborn","classroom_air"]': [T0 + MINUTE],
        '["Walsum","classroom_air"]': [T0 + 3 * MINUTE],
    }


def test_a_full_batch_leaves_at_once() -> None:
    batches = DistrictBatches(PARTITIONS, MINUTE, max_windows=3)
    assert batches.add(device(1), closed_window(0, 1.0)) is None
    assert batches.add(device(2), closed_window(0, 2.0)) is None
    full = batches.add(device(3), closed_window(0, 3.0))
    assert full is not None
    partition, value = full
    assert partition == key_partition(b'["Mitte","classroom_air"]', PARTITIONS)
    assert [w[0] for w in orjson.loads(value)['["Mitte","classroom_air"]']] == [
        device(n).device_id for n in (1, 2, 3)
    ]
    assert not batches  # nothing of that partition is left behind


def test_devices_of_no_district_are_left_out() -> None:
    batches = DistrictBatches(PARTITIONS, MINUTE)
    assert batches.add(unknown_device("dui-x"), closed_window(0, 1.0)) is None
    assert batches.take() == []


def test_a_batch_aggregates_as_the_same_windows_one_by_one() -> None:
    windows = [
        (device(n, d), closed_window(n % 4, 400.0 + 10 * n))
        for n in range(12)
        for d in ("Mitte", "Hamborn")
    ]
    one_by_one, _ = stage()
    for offset, (dev, (start, aggs)) in enumerate(windows):
        key = orjson.dumps([dev.district, dev.kind])
        value = orjson.dumps([dev.device_id, start, start + MINUTE, aggs])
        one_by_one.on_device_window(key, value, 0, offset, T0)
    batched, _ = stage()
    batches = DistrictBatches(PARTITIONS, MINUTE)
    for dev, window in windows:
        batches.add(dev, window)
    for offset, (partition, value) in enumerate(batches.take()):
        batched.on_batch(value, partition, offset, T0)
    want = closed_districts(one_by_one)
    assert len(want) == 2 and closed_districts(batched) == want


def test_a_redelivered_batch_is_applied_once() -> None:
    districts, _ = stage()
    batches = DistrictBatches(PARTITIONS, MINUTE)
    batches.add(device(1), closed_window(0, 500.0))
    [(partition, value)] = batches.take()
    districts.on_batch(value, partition, 7, T0)
    state = districts.states.get('["Mitte","classroom_air"]')
    assert state is not None and state.applied == 7
    districts.on_batch(value, partition, 7, T0)  # after a restart: the same offset
    districts.on_batch(value, partition, 6, T0)
    assert state.applied == 7
    [record] = closed_districts(districts)
    assert record["devices"] == 1


def test_bad_batches_are_counted_and_good_entries_kept() -> None:
    districts, metrics = stage()
    good = [device(1).device_id, T0, T0 + MINUTE, closed_window(0, 500.0)[1]]
    for value in [b"not json", b"[1, 2]", orjson.dumps({'["Mitte","classroom_air"]': [[1], good]})]:
        districts.on_batch(value, 0, 1, T0)
    errors = metrics.registry.get_sample_value("citystreams_district_input_errors_total")
    assert errors == 3
    [record] = closed_districts(districts)
    assert record["district"] == "Mitte" and record["devices"] == 1
