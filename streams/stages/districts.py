"""The district stage: closed device windows in, district window aggregates out.

No faust: driven with plain arguments, like :mod:`streams.stages.ingest`. Its input is keyed
by (district, kind), so one partition owns each key; the closing rule is described in
:mod:`streams.stages.windows`.
"""

from __future__ import annotations

import logging

import orjson

from streams.messages import DeviceWindowClosed
from streams.metrics import Metrics
from streams.stages.enrich import UNKNOWN_KIND, Device, Registry
from streams.stages.ingest import StateStore
from streams.stages.windows import (
    Closed,
    DistrictState,
    add_device_window,
    close_districts,
    district_window_record,
)

log = logging.getLogger(__name__)


def district_message(device: Device, window: Closed) -> tuple[bytes, bytes] | None:
    """A closed device window as the district stage's input: (key, value), or None for
    devices that belong to no district (unregistered ones passed as ``unknown``)."""
    if device.kind == UNKNOWN_KIND:
        return None
    message = DeviceWindowClosed(
        device.district, device.kind, device.device_id, window.start, window.end, window.aggregates
    )
    return message.key(), message.encode()


def encode_district(state: DistrictState) -> bytes:
    return orjson.dumps(state.to_json())


def decode_district(raw: bytes) -> DistrictState:
    return DistrictState.from_json(orjson.loads(raw))


class Districts:
    def __init__(
        self,
        *,
        states: StateStore[DistrictState],
        registry: Registry,
        metrics: Metrics,
        district_size_ms: int = 300_000,
        grace_ms: int = 10_000,
        wait_ms: int = 70_000,
    ) -> None:
        self.states = states
        self.registry = registry
        self.metrics = metrics
        self.size = district_size_ms
        self.grace = grace_ms
        self.wait = wait_ms
        self.active: dict[str, int] = {}  # state key -> partition, for the timer

    def on_device_window(
        self, key: bytes, value: bytes, partition: int, offset: int, now_ms: int
    ) -> None:
        try:
            message = DeviceWindowClosed.decode(key, value)
        except ValueError:  # internal topic, but never crash on what it carries
            log.warning("corrupt device window at %d@%d ignored", partition, offset)
            self.metrics.district_input_errors.inc()
            return
        device_id, start, end, aggs = (
            message.device_id,
            message.start,
            message.end,
            message.aggregates,
        )
        state_key = key.decode()
        state = self.states.get(state_key)
        if state is None:
            state = DistrictState()
        elif offset <= state.applied:
            return  # redelivered after a restart: already applied
        if not add_device_window(state, device_id, start, end, aggs, now_ms, self.size):
            self.metrics.late_device_windows.inc()
        state.applied = offset
        self.states.set(state_key, state, partition)
        self.active[state_key] = partition

    def tick(self, now_ms: int, out: list[tuple[bytes, bytes]]) -> list[str]:
        """Close what is ready: its records, (district, record), are appended to ``out``;
        returns the state keys that changed."""
        changed: list[str] = []
        done: list[str] = []
        for state_key, partition in self.active.items():
            state = self.states.get(state_key)
            if state is None or not state.open:
                done.append(state_key)
                continue
            district, kind = orjson.loads(state_key)
            registered = self.registry.members.get((district, kind))
            closed = close_districts(state, now_ms, self.size, self.grace, self.wait, registered)
            if not closed:
                continue
            for start, window in closed:
                record = district_window_record(district, kind, start, self.size, window)
                out.append((district.encode(), orjson.dumps(record)))
                self.metrics.windows_emitted_district.inc()
            self.states.set(state_key, state, partition)
            changed.append(state_key)
            if not state.open:
                done.append(state_key)
        for state_key in done:
            self.active.pop(state_key, None)
        return changed
