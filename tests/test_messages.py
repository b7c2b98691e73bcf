"""The internal topics' records (streams/messages.py): each decodes what the first wave
wrote (v1), ignores what a later version adds, and refuses what is not of its type."""

from __future__ import annotations

import pytest

from streams.messages import (
    DeviceWindowClosed,
    ForwardedReadings,
    Heard,
    LivenessNotes,
    OccupancyValues,
    Source,
)
from streams.stages.validate import Reading


def test_forwarded_readings_round_trip_and_read_v1() -> None:
    batch = ForwardedReadings(
        Source("telemetry.raw", 2, 41, b"gw"), [Reading("d1", 5, 7, {"x": 1.0})]
    )
    assert ForwardedReadings.decode(batch.encode()) == batch
    v1 = b'{"src":["telemetry.raw",2,41,"Z3c="],"readings":[["d1",5,7,{"x":1.0}]],"later":1}'
    assert ForwardedReadings.decode(v1) == batch


def test_a_closed_device_window_round_trips_and_reads_v1() -> None:
    window = DeviceWindowClosed("Mitte", "classroom_air", "d1", 0, 60_000, {"co2": [1, 2]})
    assert DeviceWindowClosed.decode(window.key(), window.encode()) == window
    v1 = (b'["Mitte","classroom_air"]', b'["d1",0,60000,{"co2":[1,2]},"later"]')
    assert DeviceWindowClosed.decode(*v1) == window


def test_liveness_notes_and_occupancy_round_trip() -> None:
    notes = LivenessNotes([Heard("ap", "s1", 10, 9), Heard("ap", "ap", 11, 10)])
    assert LivenessNotes.decode(notes.encode()) == notes
    assert LivenessNotes.decode(b'[["ap","s1",10,9,"later"],["ap","ap",11,10]]') == notes
    assert OccupancyValues.decode(OccupancyValues({"clients": 3.0}).encode()).values == {
        "clients": 3.0
    }


@pytest.mark.parametrize("raw", [b"", b"{", b"[]", b'{"src": 1}', b'"text"', b"[[1]]"])
def test_what_is_not_of_its_type_is_refused(raw: bytes) -> None:
    with pytest.raises(ValueError, match="forwarded batch"):
        ForwardedReadings.decode(raw)
    with pytest.raises(ValueError, match="closed device window"):
        DeviceWindowClosed.decode(raw, raw)
    if raw not in (b"[]",):  # (an empty list is no notes at all: valid)
        with pytest.raises(ValueError, match="liveness notes"):
            LivenessNotes.decode(raw)
