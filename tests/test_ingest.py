"""The ingest stage without a network: routing, registry, duplicates, dead letters."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import orjson
import pytest
from jsonschema import Draft202012Validator
from prometheus_client import CollectorRegistry

from streams.messages import Source
from streams.metrics import Metrics
from streams.stages.enrich import Registry
from streams.stages.ingest import DictStore, Ingest, Outbox
from streams.stages.routing import device_partition
from streams.stages.validate import Limits
from streams.stages.windows import DeviceState

SCHEMAS = Path(__file__).parents[1] / "schemas"
NOW = 1795780800000
PARTITIONS = 6
DEVICES = [f"dui-mitte-gs017-r{i:02d}-air" for i in range(1, 13)]


def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(json.loads((SCHEMAS / f"{name}.schema.json").read_text()))


@pytest.fixture
def stage() -> Ingest:
    registry = Registry()
    for device_id in DEVICES:
        record = {
            "device_id": device_id,
            "kind": "classroom_air",
            "district": "Mitte",
            "site": "gs017",
            "lat": 51.43,
            "lon": 6.76,
        }
        assert registry.apply(device_id.encode(), orjson.dumps(record)) is None
    return Ingest(
        limits=Limits(),
        registry=registry,
        states=DictStore(),
        metrics=Metrics(CollectorRegistry()),
        partitions=PARTITIONS,
    )


def reading(device_id: str, seq: int, co2: float = 800.0) -> dict[str, object]:
    return {"device_id": device_id, "ts": NOW + seq, "seq": seq, "metrics": {"co2_ppm": co2}}


OFFSETS = iter(range(7, 10**9))


def send(
    stage: Ingest,
    doc: object,
    partition: int | None = None,
    raw: bytes | None = None,
    offset: int | None = None,
) -> Outbox:
    value = raw if raw is not None else orjson.dumps(doc)
    if partition is None:
        partition = device_partition(doc["device_id"], PARTITIONS)  # type: ignore[index]
    out = Outbox()
    offset = next(OFFSETS) if offset is None else offset
    stage.on_raw(value, Source("telemetry.raw", partition, offset, b"k"), NOW, out)
    return out


def test_valid_reading_is_enriched(stage: Ingest) -> None:
    out = send(stage, reading(DEVICES[0], 1))
    assert out.deadletters == [] and len(out.accepted) == len(out.enriched) == 1
    record = orjson.loads(out.enriched[0][1])
    assert (record["kind"], record["district"], record["site"]) == (
        "classroom_air",
        "Mitte",
        "gs017",
    )


def test_duplicates_are_dropped_and_counted(stage: Ingest) -> None:
    for seq in (1, 2, 2, 1, 3):
        send(stage, reading(DEVICES[0], seq))
    assert stage.metrics.duplicates._value.get() == 2
    assert stage.metrics.readings_valid._value.get() == 3


def test_unknown_device_is_dead_lettered_with_its_payload(stage: Ingest) -> None:
    doc = reading("dui-nowhere-1", 1)
    out = send(stage, doc)
    assert out.accepted == []
    record = orjson.loads(out.deadletters[0][1])
    assert record["reason"] == "unknown_device"
    assert orjson.loads(base64.b64decode(record["payload_b64"])) == doc
    validator("deadletter").validate(record)


def test_unknown_devices_can_pass_as_unknown_kind(stage: Ingest) -> None:
    stage.pass_unknown = True
    out = send(stage, reading("dui-nowhere-1", 1))
    assert out.accepted[0][1].kind == "unknown"


def test_batch_splits_forwards_and_rejects_only_the_bad(stage: Ingest) -> None:
    batch = {"readings": [reading(d, 1) for d in DEVICES] + [{"device_id": "x", "ts": "soon"}]}
    here = 0
    out = send(stage, batch, partition=here)
    mine = [d for d in DEVICES if device_partition(d, PARTITIONS) == here]
    assert sorted(r.device_id for r, _ in out.accepted) == sorted(mine)
    forwarded = {p: [r[0] for r in rs] for p, rs in out.forwards.items()}
    assert here not in forwarded
    assert sorted(d for ds in forwarded.values() for d in ds) == sorted(set(DEVICES) - set(mine))
    assert [orjson.loads(v)["index"] for _, v in out.deadletters] == [len(DEVICES)]
    # The forwarded readings are accepted on their own partition, with the original source.
    for partition, readings in out.forwards.items():
        value = stage.forward_value(readings, out.forward_sources[partition])
        again = Outbox()
        stage.on_forwarded(value, Source("telemetry.bydevice", partition, 0, None), NOW, again)
        assert len(again.accepted) == len(readings) and again.deadletters == []


def test_corrupt_forward_is_dead_lettered_not_raised(stage: Ingest) -> None:
    out = Outbox()
    stage.on_forwarded(b'{"src": 1}', Source("telemetry.bydevice", 0, 3, None), NOW, out)
    assert orjson.loads(out.deadletters[0][1])["reason"] == "schema"


@pytest.mark.parametrize(
    "raw", [b"", b"\xff\xfe", b"[]", b"{}", b"x" * 70_000, b'{"readings": []}']
)
def test_bad_messages_produce_schema_valid_dead_letters(stage: Ingest, raw: bytes) -> None:
    out = send(stage, None, partition=0, raw=raw)
    assert len(out.deadletters) == 1
    record = orjson.loads(out.deadletters[0][1])
    validator("deadletter").validate(record)
    assert (record["topic"], record["partition"], record["key"]) == ("telemetry.raw", 0, "k")
    # the original bytes; beyond 64 KiB their beginning and their length
    assert base64.b64decode(record["payload_b64"]) == raw[:65_536]
    assert record.get("payload_bytes", len(raw)) == len(raw)


def test_a_message_redelivered_after_a_restart_is_not_applied_twice(stage: Ingest) -> None:
    doc = reading(DEVICES[0], 1) | {"seq": None}  # no seq: only the offset can tell
    send(stage, doc, offset=100)
    send(stage, doc, offset=100)  # the same message again (at-least-once redelivery)
    send(stage, doc | {"ts": NOW + 5}, offset=101)
    assert stage.metrics.readings_valid._value.get() == 2


def test_readings_late_beyond_grace_are_dead_lettered(stage: Ingest) -> None:
    send(stage, reading(DEVICES[0], 1) | {"ts": NOW + 5_000})
    out = send(stage, reading(DEVICES[0], 2) | {"ts": NOW + 75_000})  # closes [NOW, NOW+60s)
    assert [w[0] for _, _, w in out.closed] == [NOW]
    out = send(stage, reading(DEVICES[0], 3) | {"ts": NOW + 30_000})
    assert [orjson.loads(v)["reason"] for _, v in out.deadletters] == ["late"]


def test_idle_timer_closes_only_on_silence_the_input_has_shown(stage: Ingest) -> None:
    send(stage, reading(DEVICES[0], 1))  # window [NOW, NOW + 60 s), arrived at NOW
    p = device_partition(DEVICES[0], PARTITIONS)
    later = NOW + 80_000  # past end + grace, and 80 s of wall-clock silence
    out = Outbox()
    stage.tick(later, out, busy={p})  # its partition's backlog is not read yet
    stage.tick(later, out, observed={p: NOW + 5_000})  # broker's last answer: 5 s after
    stage.tick(later, out, since={p: NOW + 75_000})  # input readable again since 75 s
    assert out.closed == []
    stage.tick(later, out, observed={p: NOW + 79_000})
    assert [(d.device_id, w[0]) for d, _, w in out.closed] == [(DEVICES[0], NOW)]


class CountingStore(DictStore[DeviceState]):
    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def get(self, key: str) -> DeviceState | None:
        self.reads.append(key)
        return super().get(key)


def test_idle_timer_reads_a_devices_state_only_once_a_window_can_close(stage: Ingest) -> None:
    stage.states = store = CountingStore()
    send(stage, reading(DEVICES[0], 1))  # window [NOW, NOW + 60 s), arrived at NOW
    send(stage, reading(DEVICES[1], 2) | {"ts": NOW + 65_000})  # [NOW + 60 s, NOW + 120 s)
    store.reads.clear()
    out = Outbox()
    for second in range(0, 70):  # its end + grace is 70 s: nothing can close before
        stage.tick(NOW + second * 1000, out)
    assert store.reads == [] and out.closed == []
    stage.tick(NOW + 70_000, out)
    assert store.reads == [DEVICES[0]] and [d.device_id for d, _, _ in out.closed] == [DEVICES[0]]
    assert list(stage.active) == [DEVICES[1]]


def test_idle_timer_in_chunks_closes_what_one_tick_would_and_nothing_heard_since(
    stage: Ingest,
) -> None:
    for i, device_id in enumerate(DEVICES):
        send(stage, reading(device_id, i + 1))  # windows [NOW, NOW + 60 s), arrived at NOW
    later = NOW + 80_000
    candidates = stage.idle_candidates(later)
    assert sorted(candidates) == sorted(DEVICES)
    out = Outbox()
    stage.tick(later, out, devices=candidates[:1])
    # Between chunks a reading arrives for a device of the next chunk: its window stays.
    heard = candidates[-1]
    stage.on_raw(
        orjson.dumps(reading(heard, 50) | {"ts": NOW + 70_000}),
        Source("telemetry.raw", device_partition(heard, PARTITIONS), next(OFFSETS), b"k"),
        later,
        Outbox(),  # (that reading closed its old window itself)
    )
    stage.tick(later, out, devices=candidates[1:])
    stage.tick(later, out, devices=candidates[1:])  # (a repeated chunk closes nothing twice)
    assert sorted(d.device_id for d, _, _ in out.closed) == sorted(set(DEVICES) - {heard})
    assert list(stage.active) == [heard]


def test_a_device_that_restarts_its_counter_keeps_its_readings(stage: Ingest) -> None:
    device = DEVICES[0]
    before = [reading(device, seq) for seq in range(1, 6)]
    after = [dict(reading(device, seq), ts=NOW + 60_000 + seq) for seq in range(1, 6)]
    accepted = [len(send(stage, doc).accepted) for doc in [*before, *after, after[2]]]
    assert accepted == [1] * 10 + [0]  # every reading after the reset once; the repeat not
    assert stage.metrics.seq_resets._value.get() == 1
    assert stage.metrics.duplicates._value.get() == 1
