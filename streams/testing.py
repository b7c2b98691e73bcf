"""An in-process driver for the pipeline, in the manner of Kafka Streams'
``TopologyTestDriver``: no broker, no faust, an explicit wall clock.

It runs the worker's own core (:class:`streams.core.Pipeline`) and runtime classes
(:class:`~streams.runtime.delivery.Delivery`, :class:`~streams.runtime.rebalance.Rebalance`,
:class:`~streams.runtime.timers.Timers`) over topics held in memory, each with the
partitions and offsets Kafka would give it::

    driver = PipelineDriver(devices=[...], window_s=60)
    driver.send({"device_id": "co2-1", "ts": t, "metrics": {"co2_ppm": 900}})
    driver.advance(90)                   # the wall clock, and every timer with it
    windows = driver.read(METRICS_DEVICE)

Input sent to an owned partition is processed at once, and so is what the pipeline
writes to its own internal topics (forwarded batches, device windows for districts,
liveness notes). ``checkpoint``, ``assign``, ``revoke`` and ``crash`` move the worker
as a rebalance or a kill -9 would: after a crash, input that no checkpoint
acknowledged is read again, and state is what the changelogs hold.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from streams.core import Pipeline, Quiet
from streams.metrics import Metrics
from streams.runtime.delivery import Delivery
from streams.runtime.rebalance import Rebalance
from streams.runtime.timers import InputWatch, Timers
from streams.settings import Settings
from streams.stages.enrich import Registry
from streams.stages.routing import device_partition, key_partition
from streams.stages.rules import RuleSet, load_rules, parse_rules
from streams.state import Records
from streams.topics import topic_name

T = TypeVar("T")

START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z, a round wall clock to start from


@dataclass(frozen=True, slots=True)
class Message:
    """A record of one of the driver's topics."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int  # ms

    def json(self) -> Any:
        return None if self.value is None else orjson.loads(self.value)


class _Event:
    """What the runtime holds until a checkpoint acknowledges it (a faust event's part
    that :class:`Delivery` uses)."""

    __slots__ = ("driver", "message")

    def __init__(self, driver: PipelineDriver, message: Message) -> None:
        self.driver = driver
        self.message = message

    def ack(self) -> None:
        m = self.message
        tp = (m.topic, m.partition)
        self.driver.committed[tp] = max(self.driver.committed.get(tp, 0), m.offset + 1)


class _Batch:
    """A producer batch (the part of aiokafka's BatchBuilder that Outputs uses)."""

    def __init__(self) -> None:
        self.records: list[tuple[bytes | None, bytes | None]] = []

    def append(self, *, timestamp: int | None, key: bytes | None, value: bytes | None) -> object:
        self.records.append((key, value))
        return True

    def close(self) -> None:
        pass


class _Producer:
    """Appends to the driver's topics. While acks are held, a batch is handed over but
    not yet on its topic: what a checkpoint must wait for."""

    def __init__(self, driver: PipelineDriver) -> None:
        self.driver = driver
        self.held: list[tuple[asyncio.Future[None], str, int, _Batch]] = []
        self.hold = False

    def create_batch(self) -> _Batch:
        return _Batch()

    async def send_batch(self, batch: _Batch, topic: str, *, partition: int) -> Any:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.hold:
            self.held.append((done, topic, partition, batch))
        else:
            self._land(done, topic, partition, batch)
        return done

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(self.driver.settings.partitions))

    def release(self) -> None:
        held, self.held = self.held, []
        for done, topic, partition, batch in held:
            self._land(done, topic, partition, batch)

    def _land(self, done: asyncio.Future[None], topic: str, partition: int, batch: _Batch) -> None:
        for key, value in batch.records:
            self.driver.append(topic, partition, key, value)
        done.set_result(None)


class _CaughtUp(InputWatch):
    """Input as the driver has it: every owned partition read to the end (the driver
    processes what it is sent before the clock moves), the broker always answering."""

    def __init__(self, driver: PipelineDriver) -> None:
        super().__init__(None, ())  # type: ignore[arg-type]
        self.driver = driver

    def quiet(self, now: int, owned_since: int) -> Quiet:
        return Quiet({}, {p: now for p in range(self.driver.settings.partitions)}, set())


class PipelineDriver:
    """One worker over in-memory topics, driven by the test (see the module's text).

    ``devices``: device records (the ``devices`` topic's contract); ``rules``: a rules
    file's text (default: the shipped rules); further keywords are :class:`Settings`.
    It owns every partition until told otherwise."""

    def __init__(
        self,
        devices: Iterable[Mapping[str, Any]] = (),
        rules: str | RuleSet | None = None,
        start_ms: int = START_MS,
        **settings: Any,
    ) -> None:
        self.settings = Settings(**{"partitions": 3, **settings})
        if rules is None or isinstance(rules, RuleSet):
            self.ruleset = rules if rules is not None else load_rules()
        else:
            self.ruleset = parse_rules(rules)
        self.devices = [dict(d) for d in devices]
        self.now_ms = start_ms
        self.topics: dict[str, dict[int, list[Message]]] = {}
        self.committed: dict[tuple[str, int], int] = {}  # acknowledged input offsets
        self.landed: list[Message] = []  # every record of every topic, in landing order
        self.owned: set[int] = set(range(self.settings.partitions))
        self._loop = asyncio.new_event_loop()
        self._start()

    # --- the worker --------------------------------------------------------------------
    def _start(self) -> None:
        """A worker starts: its registry loaded, its state read from the changelogs, its
        input read from the acknowledged offsets."""
        self.metrics = Metrics()
        registry = Registry()
        for device in self.devices:
            registry.apply(str(device["device_id"]).encode(), orjson.dumps(device))
        self.core = Pipeline(self.settings, self.ruleset, self.metrics, registry)
        self.producer = _Producer(self)
        self.delivery = Delivery(self.core, lambda: self.producer, self.settings.app_id)
        watch = _CaughtUp(self)
        self._rebalance = Rebalance(
            None,  # type: ignore[arg-type]  # (no faust app: no group to lose)
            self.core,
            self.delivery,
            watch,
            self._load,
            self.metrics,
            clock=lambda: self.now_ms,
        )
        self.timers = Timers(
            self.core,
            self.delivery,
            watch,
            self._rebalance.ready,
            self.metrics,
            clock=lambda: self.now_ms,
        )
        self.position = dict(self.committed)  # the next offset to process per input
        self.assign(self.owned)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._loop.run_until_complete(coro)

    async def _load(self, topic: str, partitions: set[int]) -> dict[int, Records]:
        logs = self.topics.get(topic, {})
        return {p: [(m.key, m.value) for m in logs.get(p, []) if m.key] for p in partitions}

    def close(self) -> None:
        self._loop.close()

    def __enter__(self) -> PipelineDriver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- topics ------------------------------------------------------------------------
    def name(self, base: str) -> str:
        """A topic's full name (prefix, app id) from its base name (streams.topics)."""
        return topic_name(self.settings.topic_prefix, base, self.settings.app_id)

    def append(self, topic: str, partition: int, key: bytes | None, value: bytes | None) -> Message:
        log = self.topics.setdefault(topic, {}).setdefault(partition, [])
        message = Message(topic, partition, len(log), key, value, self.now_ms)
        log.append(message)
        self.landed.append(message)
        return message

    def messages(self, base: str) -> list[Message]:
        """Every record of a topic, partition by partition, in offset order."""
        partitions = self.topics.get(self.name(base), {})
        return [m for p in sorted(partitions) for m in partitions[p]]

    def read(self, base: str) -> list[Any]:
        """The values of a topic's records, decoded from JSON."""
        return [m.json() for m in self.messages(base)]

    # --- input -------------------------------------------------------------------------
    def send(
        self,
        value: bytes | Mapping[str, Any],
        key: bytes | str | None = None,
        partition: int | None = None,
        topic: str = "telemetry.raw",
    ) -> Message:
        """A record on an input topic (by base name), then everything it causes. Its
        partition: ``partition``, else its key's, else its device's."""
        raw = value if isinstance(value, bytes) else orjson.dumps(value)
        if isinstance(key, str):
            key = key.encode()
        if key is None and isinstance(value, Mapping) and "device_id" in value:
            key = str(value["device_id"]).encode()
        if partition is None:
            count = self.settings.partitions
            partition = 0 if key is None else key_partition(key, count)
        message = self.append(self.name(topic), partition, key, raw)
        self.pump()
        return message

    def owner(self, device_id: str) -> int:
        """The partition that owns a device."""
        return device_partition(device_id, self.settings.partitions)

    def pump(self) -> None:
        """Process every record of the owned input partitions not yet processed, a batch
        per partition, until the pipeline's own internal topics are read to the end too."""
        names = self.core.topics.inputs
        while True:
            moved = False
            for topic in names:
                for partition in sorted(self.owned):
                    log = self.topics.get(topic, {}).get(partition, [])
                    start = self.position.get((topic, partition), 0)
                    if start < len(log):
                        self._process(topic, partition, log[start:])
                        self.position[(topic, partition)] = len(log)
                        moved = True
            if not moved:
                return

    def _process(self, topic: str, partition: int, batch: list[Message]) -> None:
        async def run() -> None:
            async with self.delivery.step:
                self.core.process(topic, partition, batch, self.now_ms)
                self.delivery.pending.extend(_Event(self, m) for m in batch)
                await self.delivery.flush()

        self._run(run())

    # --- the clock ---------------------------------------------------------------------
    def advance(self, seconds: float, step_s: float = 1.0) -> None:
        """Move the wall clock, a timer tick every ``step_s``: windows close when their
        devices go quiet, liveness notes leave, offline devices are judged."""
        end = self.now_ms + int(seconds * 1000)
        while self.now_ms < end:
            self.now_ms = min(end, self.now_ms + int(step_s * 1000))
            self.tick()

    def tick(self) -> None:
        """Every timer once, at the current wall clock, then what their outputs cause."""
        timers = self.timers

        async def run() -> None:
            await timers.close_quiet_windows()
            await timers.flush_heard()
            await timers.detect_offline()
            async with self.delivery.step:
                await self.delivery.flush()

        self._run(run())
        self.pump()

    # --- checkpoints and rebalances ----------------------------------------------------
    def checkpoint(self) -> None:
        """Outputs, then the state that records them, then input acknowledged."""
        self._run(self.delivery.checkpoint())

    def begin_checkpoint(self) -> asyncio.Task[None]:
        """A checkpoint, run until it waits for Kafka; :meth:`finish` completes it."""
        task = self._loop.create_task(self.delivery.checkpoint())
        self._run(asyncio.sleep(0.01))
        return task

    def finish(self, task: asyncio.Task[None]) -> None:
        self._loop.run_until_complete(task)

    def hold_acks(self) -> None:
        """Kafka stops acknowledging: handed-over batches wait for :meth:`release_acks`."""
        self.producer.hold = True

    def release_acks(self) -> None:
        self.producer.hold = False
        self.producer.release()

    def assign(self, partitions: Iterable[int]) -> None:
        """Own these partitions of every input (after a checkpoint, as faust does)."""
        self.owned = set(partitions)
        names = self.core.topics.inputs
        assigned = {_TP(topic, p) for topic in names for p in self.owned}
        self._run(self._rebalance.on_assigned(None, assigned))
        for topic in names:
            for p in self.owned:
                self.position[(topic, p)] = self.committed.get((topic, p), 0)
        self.pump()

    def revoke(self) -> None:
        """Every partition leaves this worker (a checkpoint writes what changed)."""
        self._run(self._rebalance.on_revoked(None, set()))
        self.owned = set()

    def crash(self) -> None:
        """kill -9, and a new worker in its place: what no checkpoint acknowledged is
        read again, and state is what the changelogs hold. (Outputs already handed to
        Kafka stay there: at-least-once.)"""
        self._start()


@dataclass(frozen=True, slots=True)
class _TP:
    topic: str
    partition: int
