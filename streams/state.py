"""Durable per-key state that costs a dict lookup per reading, not a changelog write.

A faust ``Table`` written per update sends one changelog message each time (~35-80 us).
:class:`DurableMap` keeps decoded values in a plain dict, remembers which keys changed,
and encodes each changed key once per checkpoint (see ``streams.runtime.delivery``: state
is written and acknowledged before the input offsets it stands for are committed).

The changelog is our own compacted topic, not a faust table's: faust's table recovery
resumes the input partitions while its fetcher is still delivering, and messages fetched
in that moment were dropped (measured: about half of the first 300 messages of each
partition after a restart, see the windows issue). Without tables faust resumes input
only after seeking it, and the worker loads this state itself
(:func:`streams.runtime.changelogs.load_partitions`) before its agents touch a message of
the new assignment.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, NamedTuple, TypeVar

log = logging.getLogger(__name__)

V = TypeVar("V")
Records = list[tuple[bytes, bytes | None]]  # (key, value) of a changelog, oldest first


class Write(NamedTuple):
    """One changelog record to send: the caller sends it and waits for the ack."""

    sink: Any  # where to send it (a faust topic in the pipeline)
    partition: int
    key: bytes
    value: bytes | None


def compact(raw: bytes) -> bytes:
    """``raw`` in an allocation of its own size. ``orjson.dumps`` returns bytes in a
    buffer it never shrinks (4 KiB at least since orjson 3.12: measured 4,094 bytes for
    ``[1,2,3]``), so every value kept beyond the moment costs 4 KiB: what took a worker
    with 100,000 devices to 1.9 GB. The copy costs ~0.2 us."""
    return bytes(memoryview(raw))


class DurableMap(Generic[V]):
    """Per-key state of the partitions this worker owns, with its changelog topic.

    A key is held once: decoded in ``live``, or encoded in ``cold`` (as its changelog
    record; decoded again on the next ``get``). Loaded state starts cold.

    ``budget`` bounds the decoded keys: a decoded value costs ~5x its encoding (a
    device's windows ~1.4 KB against ~300 bytes). Past the budget, keys written at a
    checkpoint stay encoded, as the record just written (no extra encoding). The most
    recently written go cold: with devices that all report alike (a fleet cycling
    through its readings) the first ``budget`` keys stay decoded for good and the
    others pay one decoding per checkpoint they are touched in, where evicting the
    least recently used would evict every key in turn."""

    def __init__(
        self,
        topic: str,
        encode: Callable[[V], bytes],
        decode: Callable[[bytes], V],
        sink: Any = None,
        budget: int | None = None,
    ) -> None:
        self.topic = topic
        self.encode = encode
        self.decode = decode
        self.sink = sink
        self.budget = budget
        self.cold: dict[str, bytes] = {}  # loaded from the changelog, not yet decoded
        self.live: dict[str, V] = {}  # decoded, possibly newer than the changelog
        # key -> partition of the changelog it belongs to (the key's input partition)
        self.dirty: dict[str, int] = {}

    def get(self, key: str) -> V | None:
        value = self.live.get(key)
        if value is not None:
            return value
        raw = self.cold.pop(key, None)
        if raw is None:
            return None
        value = self.live[key] = self.decode(raw)
        return value

    def peek(self, key: str) -> V | None:
        """``key``'s value without keeping a decoded copy of a cold one: for readers
        that change it only to ``set`` it (timers, gauges), so that reading every key
        now and then does not decode the whole store for good."""
        value = self.live.get(key)
        if value is not None:
            return value
        raw = self.cold.get(key)
        return None if raw is None else self.decode(raw)

    def set(self, key: str, value: V, partition: int) -> None:
        self.live[key] = value
        self.dirty[key] = partition
        self.cold.pop(key, None)  # (set without a get first: the cold record is stale)

    def forget(self, key: str) -> None:
        """Drop ``key`` from this worker's memory (not from the changelog)."""
        self.live.pop(key, None)
        self.cold.pop(key, None)
        self.dirty.pop(key, None)

    def items(self) -> Iterator[tuple[str, V]]:
        """Every key this worker holds, decoded: a read-only view (a cold value is
        decoded for the caller, not kept: changing it changes nothing). Not a hot path."""
        yield from list(self.live.items())
        decode = self.decode
        for key, raw in list(self.cold.items()):
            yield key, decode(raw)

    def collect(self, keys: Iterable[str] | None = None) -> list[Write]:
        """Encode the changed keys (all, or just ``keys``) and return the changelog
        records to send. Synchronous: the caller snapshots state and the events it
        stands for at one instant, then awaits the sends."""
        if keys is None:
            dirty, self.dirty = self.dirty, {}
        else:
            dirty = {k: p for k in keys if (p := self.dirty.pop(k, None)) is not None}
        encode, live, sink = self.encode, self.live, self.sink
        writes: list[Write] = []
        for key, partition in dirty.items():
            raw = compact(encode(live[key]))
            writes.append(Write(sink, partition, key.encode(), raw))
        over = len(live) - self.budget if self.budget is not None else 0
        if over > 0:
            cold = self.cold
            # the most recently written first (writes are in the order of `dirty`)
            for key, w in zip(reversed(dirty), reversed(writes), strict=True):
                del live[key]
                cold[key] = w.value
                over -= 1
                if not over:
                    break
        return writes

    def replace(self, partitions: dict[int, Records]) -> dict[str, int]:
        """Hold exactly these partitions, with these changelog records (oldest first);
        returns each key's partition.

        Everything else is dropped, decoded copies included: after a rebalance the
        changelog is the truth (another worker may have owned a partition meanwhile).
        Call it only after a checkpoint, with nothing dirty."""
        if self.dirty:
            log.warning("%s: %d unwritten keys dropped", self.topic, len(self.dirty))
        self.cold.clear()
        self.live.clear()
        self.dirty.clear()
        partition_of: dict[str, int] = {}
        for partition, records in partitions.items():
            for raw_key, value in records:
                key = raw_key.decode()
                if value is None:  # a tombstone
                    self.cold.pop(key, None)
                    partition_of.pop(key, None)
                else:
                    self.cold[key] = value
                    partition_of[key] = partition
        return partition_of

    def __len__(self) -> int:
        return len(self.cold) + len(self.live)
