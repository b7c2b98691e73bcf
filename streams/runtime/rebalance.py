"""Rebalancing: state is loaded on assignment, checkpointed on revocation and at
shutdown. Agents and timers wait while ``ready`` is clear."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import faust

from streams.core import Pipeline
from streams.metrics import Metrics
from streams.runtime.delivery import Delivery
from streams.runtime.internals import lost_membership
from streams.runtime.timers import InputWatch, now_ms
from streams.state import Records

log = logging.getLogger(__name__)

# Reads one changelog's partitions: (topic, partitions) -> records per partition.
Loader = Callable[[str, set[int]], Awaitable[dict[int, Records]]]


def state_digest(stored: Mapping[bytes, bytes]) -> str:
    """A short digest of a state store's records (key order does not matter): lets an
    operator or a test compare the state a worker restored with its changelog."""
    h = hashlib.sha256()
    for key in sorted(stored):
        h.update(len(key).to_bytes(4, "big") + key)
        value = stored[key]
        h.update(len(value).to_bytes(4, "big") + value)
    return h.hexdigest()[:16]


class Rebalance:
    """faust's rebalance callbacks, as methods (connected by :mod:`streams.runtime.wiring`)."""

    def __init__(
        self,
        app: faust.App,
        core: Pipeline,
        delivery: Delivery,
        watch: InputWatch,
        load: Loader,
        metrics: Metrics,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.clock = clock
        self.app = app
        self.core = core
        self.delivery = delivery
        self.watch = watch
        self.load = load
        self.metrics = metrics
        # Set once the state of the current assignment is loaded; agents and timers wait.
        self.ready = asyncio.Event()

    async def on_revoked(self, sender: Any, revoked: set[Any], **kwargs: Any) -> None:
        """Whatever changed is written before another worker may take the partitions.
        (faust has stopped the flow and waited for every event in progress.)"""
        self.ready.clear()
        if self.delivery.transactions is not None and lost_membership(self.app):
            # This worker's session expired (cut off from the broker): its partitions
            # may already be another worker's, which processes their input again. Its
            # open transaction must not commit (duplicates, offsets moved back).
            await self.delivery.abandon()
        else:
            await self.delivery.checkpoint()
        self.core.revoke()
        self.watch.revoked()
        self.metrics.forget_partitions()

    async def on_assigned(self, sender: Any, assigned: set[Any], **kwargs: Any) -> None:
        """The state of exactly the assigned partitions, read from the changelogs,
        before any agent or timer touches it."""
        self.ready.clear()
        await self.delivery.checkpoint()
        started = time.monotonic()
        owned = self.core.owned_state((tp.topic, tp.partition) for tp in assigned)
        topics = list(owned)
        loaded = await asyncio.gather(*(self.load(topic, owned[topic]) for topic in topics))
        self.core.assign(dict(zip(topics, loaded, strict=True)), self.clock())
        # Of the records as loaded (the changelog's), before anything decodes them
        states = self.core.device_states
        digest = state_digest({k.encode(): v for k, v in states.cold.items()})
        self.watch.assigned()
        devices = owned[self.core.topics.state_device]
        districts = owned[self.core.topics.state_district]
        self.metrics.rebalances.inc()
        self.metrics.partitions_owned.set(len(devices))
        log.info(
            "state loaded in %.2f s: %d devices (partitions %s, digest %s), "
            "%d districts (partitions %s)",
            time.monotonic() - started,
            len(states),
            sorted(devices),
            digest,
            len(self.core.district_states),
            sorted(districts),
        )
        self.ready.set()

    async def on_shutdown(self, sender: Any, **kwargs: Any) -> None:
        await self.delivery.stop()
