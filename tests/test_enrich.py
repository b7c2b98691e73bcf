from __future__ import annotations

from pathlib import Path

import orjson

from streams.stages.enrich import Registry

EXAMPLES = Path(__file__).parents[1] / "schemas" / "examples" / "valid" / "device"
# The contract's classroom sensor, behind its school's access point.
AIR = orjson.loads((EXAMPLES / "contract-example.json").read_bytes())
AP = AIR | {"device_id": AIR["parent"], "kind": "wlan_ap", "parent": None, "heartbeat_s": 30}


def put(registry: Registry, record: dict[str, object]) -> str | None:
    return registry.apply(str(record["device_id"]).encode(), orjson.dumps(record))


def test_update_replaces_and_tombstone_removes() -> None:
    registry = Registry()
    assert put(registry, AP) is None and put(registry, AIR) is None
    assert registry.children == {"dui-mitte-gs017-ap1": {"dui-mitte-gs017-r12-air"}}
    assert put(registry, AIR | {"district": "Süd", "parent": None}) is None
    device = registry.get("dui-mitte-gs017-r12-air")
    assert device is not None and (device.district, device.parent) == ("Süd", None)
    assert registry.children == {}
    assert registry.apply(b"dui-mitte-gs017-r12-air", None) is None
    assert registry.get("dui-mitte-gs017-r12-air") is None and len(registry) == 1


def test_malformed_records_are_reported_and_keep_the_old_one() -> None:
    registry = Registry()
    put(registry, AP)
    key = b"dui-mitte-gs017-ap1"
    assert registry.apply(key, b"{oops") is not None
    assert registry.apply(key, orjson.dumps(AP | {"kind": "tractor"})) is not None
    assert registry.apply(b"another-id", orjson.dumps(AP)) is not None  # key != device_id
    assert registry.apply(None, orjson.dumps(AP)) is not None
    assert registry.apply(b"\xff", None) is not None
    device = registry.get("dui-mitte-gs017-ap1")
    assert device is not None and device.kind == "wlan_ap"
