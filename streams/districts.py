"""The district stage: closed device windows in, district window aggregates out.

No faust: driven with plain arguments, like :mod:`streams.ingest`. Its input is keyed
by (district, kind), so one partition owns each key; the closing rule is described in
:mod:`streams.windows`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import orjson

from streams.enrich import UNKNOWN_KIND, Device, Registry
from streams.ingest import StateStore
from streams.metrics import Metrics
from streams.routing import key_partition
from streams.windows import (
    Closed,
    DistrictState,
    add_device_window,
    close_districts,
    district_window_record,
)

log = logging.getLogger(__name__)


@dataclass(slots=True)
class DistrictOutbox:
    records: list[tuple[bytes, bytes]] = field(default_factory=list)  # (district, record)

    def clear(self) -> None:
        self.records.clear()


class DistrictBatches:
    """Closed device windows waiting to leave for the district stage, one message per
    partition of its input.

    One message per device window made the district stage consume one Kafka message,
    through faust's per-event machinery, per closed window: about one per reading when
    readings are a window apart. A batch's value maps each (district, kind) state key
    to its windows, in the order they closed; the message has no key and goes to the
    partition of its state keys (``key_partition`` of the key, as a keyed message
    would). So one state key is still on one partition, in order.
    """

    def __init__(self, partitions: int, size_ms: int, max_windows: int = 500) -> None:
        self.partitions = partitions
        self.size_ms = size_ms
        self.max_windows = max_windows  # a partition's batch leaves when it has this many
        self.pending: dict[int, dict[str, list[list[Any]]]] = {}
        self.counts: dict[int, int] = {}
        self._partition_of: dict[str, int] = {}  # (district, kind) keys: a few hundred

    def add(self, device: Device, window: Closed) -> tuple[int, bytes] | None:
        """Queue one closed device window; returns a batch that is full, as
        (partition, value), to be sent now. Devices that belong to no district
        (unregistered ones passed as ``unknown``) are left out."""
        if device.kind == UNKNOWN_KIND:
            return None
        key = orjson.dumps([device.district, device.kind]).decode()
        partition = self._partition_of.get(key)
        if partition is None:
            partition = key_partition(key.encode(), self.partitions)
            if len(self._partition_of) < _KEYS_MAX:
                self._partition_of[key] = partition
        start, aggs = window
        entry = [device.device_id, start, start + self.size_ms, aggs]
        self.pending.setdefault(partition, {}).setdefault(key, []).append(entry)
        n = self.counts[partition] = self.counts.get(partition, 0) + 1
        if n >= self.max_windows:
            self.counts.pop(partition)
            return partition, orjson.dumps(self.pending.pop(partition))
        return None

    def take(self) -> list[tuple[int, bytes]]:
        """Every queued batch, as (partition, value); the queue is left empty."""
        out = [(p, orjson.dumps(groups)) for p, groups in self.pending.items()]
        self.pending.clear()
        self.counts.clear()
        return out

    def __bool__(self) -> bool:
        return bool(self.pending)


_KEYS_MAX = 65_536  # bounded: districts and kinds come from the registry


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

    def on_batch(self, value: bytes, partition: int, offset: int, now_ms: int) -> None:
        """One message of :class:`DistrictBatches`: every state key's windows are
        applied, or (redelivered after a restart) none of them."""
        try:
            groups = orjson.loads(value)
            if not isinstance(groups, dict):
                raise TypeError(f"a batch is an object, not {type(groups).__name__}")
        except Exception:  # internal topic, but never crash on what it carries
            log.warning("corrupt device window batch at %d@%d ignored", partition, offset)
            self.metrics.district_input_errors.inc()
            return
        for state_key, windows in groups.items():
            state = self.states.get(state_key)
            if state is None:
                state = DistrictState()
            elif offset <= state.applied:
                continue  # redelivered after a restart: already applied
            if not isinstance(windows, list):
                windows = [windows]  # (not a window either: counted as an error below)
            for window in windows:
                try:
                    device_id, start, end, aggs = window
                    added = add_device_window(state, device_id, start, end, aggs, now_ms, self.size)
                except Exception:  # one bad entry: the others still count
                    log.warning("corrupt device window in %d@%d ignored", partition, offset)
                    self.metrics.district_input_errors.inc()
                    continue
                if not added:
                    self.metrics.late_device_windows.inc()
            state.applied = offset
            self.states.set(state_key, state, partition)
            self.active[state_key] = partition

    def on_device_window(
        self, key: bytes, value: bytes, partition: int, offset: int, now_ms: int
    ) -> None:
        """One keyed device window: the input's format before DistrictBatches (a worker
        of an earlier version may still write it during a rolling upgrade)."""
        try:
            orjson.loads(key)
            device_id, start, end, aggs = orjson.loads(value)
        except Exception:  # internal topic, but never crash on what it carries
            log.warning("corrupt device window at %d@%d ignored", partition, offset)
            self.metrics.district_input_errors.inc()
            return
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

    def tick(self, now_ms: int, out: DistrictOutbox) -> list[str]:
        """Close what is ready; returns the state keys that changed."""
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
                out.records.append((district.encode(), orjson.dumps(record)))
                self.metrics.windows_emitted_district.inc()
            self.states.set(state_key, state, partition)
            changed.append(state_key)
            if not state.open:
                done.append(state_key)
        for state_key in done:
            self.active.pop(state_key, None)
        return changed
