"""Durable per-key state that costs a dict lookup per reading, not a changelog write.

A faust ``Table`` written per update sends one changelog message each time (~35-80 us).
:class:`DurableMap` keeps decoded values in a plain dict, remembers which keys changed,
and writes each changed key once per flush (every ``flush_interval``, and before every
rebalance and shutdown). The table's in-memory store holds the encoded values and faust
restores it from the changelog on assignment, so a restart or a rebalance resumes from
the last flush.

This depends on faust's memory store (``store="memory://"``), whose ``data`` dict and
key-to-partition map it updates directly, so that revoked partitions' keys are dropped
by faust as for any table.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

V = TypeVar("V")


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
        self.deleted: dict[str, int] = {}

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
        self.deleted.pop(key, None)

    def delete(self, key: str, partition: int) -> None:
        self.live.pop(key, None)
        self.dirty.pop(key, None)
        self.deleted[key] = partition

    def items(self) -> Iterator[tuple[str, V]]:
        """Every key this worker holds, decoded (loads the whole store: not a hot path)."""
        for raw_key in list(self._store().data):
            key = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key)
            value = self.get(key)
            if value is not None:
                yield key, value

    def flush(self) -> int:
        """Write every changed key to the store and the changelog; returns how many."""
        if not self.dirty and not self.deleted:
            return 0
        store = self._store()
        data, key_partition = store.data, store._key_partition
        count = 0
        for key, partition in self.dirty.items():
            raw_key = key.encode()
            raw = self.encode(self.live[key])
            data[raw_key] = raw
            key_partition[raw_key] = partition
            self.table.send_changelog(partition, raw_key, raw)
            count += 1
        for key, partition in self.deleted.items():
            raw_key = key.encode()
            data.pop(raw_key, None)
            key_partition.pop(raw_key, None)
            self.table.send_changelog(partition, raw_key, None)
            count += 1
        self.dirty.clear()
        self.deleted.clear()
        return count

    def forget(self) -> None:
        """Drop the decoded copies (after a flush): the store is the truth after a rebalance."""
        self.live.clear()
