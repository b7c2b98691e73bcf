"""Durable per-key state that costs a dict lookup per reading, not a changelog write.

A faust ``Table`` written per update sends one changelog message each time (~35-80 us).
:class:`DurableMap` keeps decoded values in a plain dict, remembers which keys changed,
and encodes each changed key once per checkpoint (see ``streams.pipeline``: state is
written and acknowledged before the input offsets it stands for are committed). The
table's in-memory store holds the encoded values and faust restores it from the
changelog on assignment, so a restart or a rebalance resumes from the last checkpoint.

This depends on faust's memory store (``store="memory://"``), whose ``data`` dict and
key-to-partition map it updates directly, so that revoked partitions' keys are dropped
by faust as for any table.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any, Generic, NamedTuple, TypeVar

log = logging.getLogger(__name__)

V = TypeVar("V")


class Write(NamedTuple):
    """One changelog record to send: the caller sends it and waits for the ack."""

    table: Any
    partition: int
    key: bytes
    value: bytes | None


class DurableMap(Generic[V]):
    def __init__(
        self,
        table: Any,
        encode: Callable[[V], bytes],
        decode: Callable[[bytes], V],
    ) -> None:
        self.table = table
        self.encode = encode
        self.decode = decode
        self.live: dict[str, V] = {}
        # key -> partition of the changelog it belongs to (the device's partition)
        self.dirty: dict[str, int] = {}

    def _store(self) -> Any:
        return self.table.data

    def get(self, key: str) -> V | None:
        value = self.live.get(key)
        if value is not None:
            return value
        raw = self._store().data.get(key.encode())
        if raw is None:
            return None
        value = self.decode(raw)
        self.live[key] = value
        return value

    def set(self, key: str, value: V, partition: int) -> None:
        self.live[key] = value
        self.dirty[key] = partition

    def items(self) -> Iterator[tuple[str, V]]:
        """Every key this worker holds, decoded (loads the whole store: not a hot path)."""
        for raw_key in list(self._store().data):
            key = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key)
            value = self.get(key)
            if value is not None:
                yield key, value

    def collect(self, keys: list[str] | None = None) -> list[Write]:
        """Encode the changed keys (all, or just ``keys``) into the store and return the
        changelog records to send. Synchronous: the caller snapshots state and the
        events it stands for at one instant, then awaits the sends."""
        store = self._store()
        data, key_partition = store.data, store._key_partition
        writes: list[Write] = []
        if keys is None:
            dirty, self.dirty = self.dirty, {}
        else:
            dirty = {k: p for k in keys if (p := self.dirty.pop(k, None)) is not None}
        for key, partition in dirty.items():
            raw_key = key.encode()
            raw = self.encode(self.live[key])
            data[raw_key] = raw
            key_partition[raw_key] = partition
            writes.append(Write(self.table, partition, raw_key, raw))
        return writes

    def forget(self) -> None:
        """Drop the decoded copies (after a flush): the store is the truth after a rebalance."""
        self.live.clear()
