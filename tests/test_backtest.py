"""``citystreams backtest`` runs the worker's own core: it raises what the worker raises,
and drops what the worker drops (repeats, late readings)."""

from __future__ import annotations

from pathlib import Path

import orjson

from streams.stages.enrich import Registry
from streams.stages.rules import load_rules
from streams.testing import PipelineDriver
from streams.tools.backtest import backtest
from streams.topics import ALERTS

RECORDINGS = Path(__file__).resolve().parent.parent / "schemas" / "examples" / "recordings"


def test_backtest_raises_what_the_worker_raises_and_drops_what_it_drops() -> None:
    devices = [orjson.loads(line) for line in (RECORDINGS / "classroom-devices.jsonl").open("rb")]
    lines = (RECORDINGS / "classroom-co2.jsonl").read_bytes().splitlines()
    first = orjson.loads(lines[0])
    late = dict(first, seq=10_000)  # a new seq, in a window long closed
    lines += [lines[-1], orjson.dumps(late)]  # the last reading again, then the late one
    registry = Registry()
    for device in devices:
        registry.apply(device["device_id"].encode(), orjson.dumps(device))

    result = backtest(load_rules(), registry, lines)

    last_ts = max(orjson.loads(line)["ts"] for line in lines)
    with PipelineDriver(devices, start_ms=last_ts + 60_000, partitions=1) as worker:
        for line in lines:
            worker.send(line, key=orjson.loads(line)["device_id"])
        alerts = worker.read(ALERTS)
    assert [e.alert_id for e in result.episodes] == list(
        dict.fromkeys(a["alert_id"] for a in alerts)
    )
    assert result.episodes[0].events == len(alerts)
    assert (result.duplicates, result.late, result.rejected) == (1, 1, 0)
