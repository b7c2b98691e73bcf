"""The pipeline core: every stage composed once, in reading order, with no faust and
no network.

A batch of input records of one partition goes in (:meth:`Pipeline.process`); what it
produces lands in one :class:`streams.outputs.Outputs` (records per topic, with their
keys), and the state it changed is marked dirty in the stores, for the next
:meth:`Pipeline.snapshot`. Wall-clock work has its own entry points (idle close,
district close, liveness), and so do assignment and revocation.

The live worker (:mod:`streams.runtime.wiring` and :mod:`streams.runtime`), ``backtest`` and
the in-process test driver (:mod:`streams.testing`) all run this class. Reading order:

    validate -> route (forward foreign devices) -> de-duplicate -> enrich -> device
    windows -> rules and alerts, occupancy, liveness notes
    closed device windows -> district windows
    liveness notes -> offline episodes (per family, per district)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from streams.messages import Heard, LivenessNotes, OccupancyValues, Source
from streams.metrics import Metrics
from streams.outputs import Outputs
from streams.settings import Settings
from streams.stages.alerts import Alerting, AlertState, decode_alerts, encode_alerts
from streams.stages.districts import (
    Districts,
    decode_district,
    district_message,
    encode_district,
)
from streams.stages.enrich import UNKNOWN_KIND, Registry
from streams.stages.ingest import Ingest, Outbox, WindowConfig, decode_device, encode_device
from streams.stages.liveness import (
    SCOPE_RULE,
    Family,
    Liveness,
    decode_family,
    district_key,
    encode_family,
    root_of,
)
from streams.stages.routing import device_partition, key_partition
from streams.stages.rules import RuleSet
from streams.stages.validate import Limits
from streams.stages.windows import DeviceState, DistrictState, device_window_record
from streams.state import DurableMap, Records, Write, compact
from streams.topics import TopicNames

log = logging.getLogger(__name__)


class InputRecord(Protocol):
    """One Kafka record of an input (faust's and aiokafka's records qualify)."""

    @property
    def offset(self) -> int: ...

    @property
    def key(self) -> bytes | None: ...

    @property
    def value(self) -> bytes | None: ...


@dataclass(frozen=True, slots=True)
class Quiet:
    """What the runtime knows of its device inputs, for the idle timer (see
    :meth:`streams.stages.ingest.Ingest.tick`): since when silence counts per partition, up
    to when it has been observed, and the partitions that cannot be judged now."""

    since: Mapping[int, int]
    observed: Mapping[int, int]
    busy: frozenset[int] | set[int]


class Pipeline:
    """The stages of one worker, their state, and the outputs they produced."""

    def __init__(
        self,
        settings: Settings,
        ruleset: RuleSet,
        metrics: Metrics,
        registry: Registry | None = None,
    ) -> None:
        self.settings = settings
        self.ruleset = ruleset
        self.metrics = metrics
        self.topics = t = TopicNames.of(settings.topic_prefix, settings.app_id)
        self.registry = registry = registry if registry is not None else Registry()
        self.partitions = partitions = settings.partitions
        grace_ms = int(settings.grace_s * 1000)

        # --- state: per device, district and family, each with its changelog -----------
        budget = settings.state_cache_keys
        self.device_states: DurableMap[DeviceState] = DurableMap(
            t.state_device, encode_device, decode_device, t.state_device, budget
        )
        self.district_states: DurableMap[DistrictState] = DurableMap(
            t.state_district, encode_district, decode_district, t.state_district, budget
        )
        self.alert_states: DurableMap[AlertState] = DurableMap(
            t.state_alerts, encode_alerts, decode_alerts, t.state_alerts, budget
        )
        self.families: DurableMap[Family] = DurableMap(
            t.state_liveness, encode_family, decode_family, t.state_liveness, budget
        )
        self.stores: tuple[DurableMap[Any], ...] = (
            self.device_states,
            self.district_states,
            self.alert_states,
            self.families,
        )
        # Everything the stages produced, until the runtime hands it to the producer.
        self.outputs = Outputs(owner_partitions=partitions)
        # Other devices' latest occupancy values, from every partition (a follower fills
        # it): what rules with an `occupancy` condition read.
        self.latest: dict[str, dict[str, float]] = {}

        # --- stages ------------------------------------------------------------------
        self.ingest = Ingest(
            limits=Limits(
                max_bytes=settings.max_message_bytes,
                max_future_ms=int(settings.max_future_s * 1000),
                max_past_ms=int(settings.max_past_s * 1000),
            ),
            registry=registry,
            states=self.device_states,
            metrics=metrics,
            partitions=partitions,
            windows=WindowConfig(
                settings.window_s * 1000, grace_ms, int(settings.window_idle_s * 1000)
            ),
            pass_unknown=settings.unknown_devices == "pass",
            emit_enriched=settings.emit_enriched,
        )
        self.alerting = Alerting(ruleset, self.alert_states, partitions, self.latest)
        self.liveness = Liveness(registry, ruleset.offline_k, ruleset.offline_severity)
        self.districts = Districts(
            states=self.district_states,
            registry=registry,
            metrics=metrics,
            district_size_ms=settings.district_window_s * 1000,
            grace_ms=grace_ms,
            wait_ms=int(settings.district_wait_s * 1000),
        )
        self._occupancy_metrics = ruleset.occupancy_metrics
        self._outbox = Outbox()

        # --- liveness bookkeeping -----------------------------------------------------
        # Devices heard since the last flush: {device: (arrival, ts)}. Their roots and
        # partitions are looked up at the flush, once per device, not once per reading.
        self.heard: dict[str, tuple[int, int]] = {}
        self.family_partition: dict[str, int] = {}  # the families this worker owns
        self.offline_roots: set[str] = set()  # families with an offline device (gauges)
        # root -> wall time before which judging its family finds nothing
        # (Liveness.next_check); dropped when the family hears from a device, cleared
        # when the registry changes.
        self.check_due: dict[str, int] = {}
        self.owned_since = 0  # wall time of the latest assignment (silence counts from it)
        self.newest = 0  # the newest event time accepted (for the event-time lag)

    # --- input ------------------------------------------------------------------------
    def process(
        self, topic: str, partition: int, records: Sequence[InputRecord], now_ms: int
    ) -> None:
        """A batch of records of one input partition, in offset order."""
        t = self.topics
        if topic == t.raw:
            self._ingest(self.ingest.on_raw, topic, partition, records, now_ms)
        elif topic == t.by_device:
            self._ingest(self.ingest.on_forwarded, topic, partition, records, now_ms)
        elif topic == t.by_district:
            for r in records:
                if r.key is not None and r.value is not None:
                    self.districts.on_device_window(r.key, r.value, partition, r.offset, now_ms)
        elif topic == t.liveness:
            for r in records:
                self._liveness_notes(r.value, partition, r.offset)
        else:
            raise ValueError(f"{topic!r} is not an input of the pipeline")

    def _ingest(
        self, stage: Any, topic: str, partition: int, records: Sequence[InputRecord], now: int
    ) -> None:
        out = self._outbox
        for r in records:
            stage(r.value, Source(topic, partition, r.offset, r.key), now, out)
            self._drain(out, now)

    def _drain(self, out: Outbox, now: int) -> None:
        """What the ingest stage produced for one message, through the stages after it."""
        if out.accepted:
            self._after_accepted(out, now)
        send = self.outputs.add
        t = self.topics
        for key, value in out.deadletters:
            send(t.deadletter, key, compact(value))
        for partition, readings in out.forwards.items():
            value = self.ingest.forward_value(readings, out.forward_sources[partition])
            send(t.by_device, None, compact(value), partition)
        for key, value, owner in out.enriched:
            send(t.enriched, key, compact(value), None, owner)
        if out.closed:
            self._windows_closed(out)
        out.clear()

    def _after_accepted(self, out: Outbox, now: int) -> None:
        # Rules run on each reading as it is accepted: an alert leaves with it.
        fired: list[dict[str, Any]] = []
        self.alerting.on_accepted(out.accepted, fired)
        self._send_alerts(fired)
        if self._occupancy_metrics:
            self._send_occupancy(out)
        self.newest = max(self.newest, max(r.ts for r, _ in out.accepted))
        if self.ruleset.offline_enabled:
            heard = self.heard
            for reading, device in out.accepted:
                if device.kind != UNKNOWN_KIND:
                    heard[device.device_id] = (now, reading.ts)

    def _send_occupancy(self, out: Outbox) -> None:
        wanted = self._occupancy_metrics
        for reading, device in out.accepted:
            values = {m: v for m in wanted if (v := reading.metrics.get(m)) is not None}
            if values:
                device_id = device.device_id
                self.outputs.add(
                    self.topics.occupancy,
                    device_id.encode(),
                    compact(OccupancyValues(values).encode()),
                    None,
                    device_partition(device_id, self.partitions),
                )

    def _windows_closed(self, out: Outbox) -> None:
        send = self.outputs.add
        t = self.topics
        for device, owner, window in out.closed:
            record = device_window_record(
                device.device_id, device.kind, device.district, device.site, window
            )
            send(
                t.device_windows,
                device.device_id.encode(),
                compact(orjson.dumps(record)),
                None,
                owner,
            )
            self.metrics.windows_emitted_device.inc()
            message = district_message(device, window)
            if message is not None:
                send(t.by_district, message[0], compact(message[1]))

    def _send_alerts(self, records: list[dict[str, Any]]) -> None:
        for record in records:
            device_id = record["device_id"]
            self.outputs.add(
                self.topics.alerts,
                device_id.encode(),
                compact(orjson.dumps(record)),
                None,
                device_partition(device_id, self.partitions),
            )
            self.metrics.alert_event(record["rule"], record["severity"], record["status"])

    def _liveness_notes(self, value: bytes | None, partition: int, offset: int) -> None:
        """Devices heard, on their family's partition: ends their offline episodes."""
        fired: list[dict[str, Any]] = []
        try:
            for root, device_id, arrival, ts in LivenessNotes.decode(value).notes:
                if self.family_home(root) != partition:
                    continue  # routed before an upgrade or a registry change
                family = self.families.get(root)
                if family is None:
                    family = Family()
                    self.liveness.track(root)
                self.liveness.heard(family, device_id, arrival, ts, fired)
                self.families.set(root, family, partition)
                self.family_partition[root] = partition
                self.check_due.pop(root, None)
                if not self.liveness.any_offline(family):
                    self.offline_roots.discard(root)
        except (ValueError, TypeError, KeyError):  # internal input all the same: never crash
            self.metrics.liveness_input_errors.inc()
            log.warning("unreadable liveness notes at %d@%d", partition, offset)
        self._send_alerts(fired)

    # --- wall-clock work ---------------------------------------------------------------
    def idle_candidates(self, now_ms: int, busy: frozenset[int] | set[int]) -> list[str]:
        """Devices whose windows the idle timer may close now, for :meth:`close_idle`."""
        return self.ingest.idle_candidates(now_ms, busy)

    def close_idle(self, now_ms: int, quiet: Quiet, devices: Iterable[str] | None = None) -> None:
        """Close the windows of devices (some or all candidates) that went quiet."""
        out = self._outbox
        self.ingest.tick(
            now_ms, out, quiet.since, quiet.busy, self.owned_since, quiet.observed, devices
        )
        self._drain(out, now_ms)

    def close_districts(self, now_ms: int) -> None:
        """District windows whose devices have all reported, or waited long enough."""
        out: list[tuple[bytes, bytes]] = []
        self.districts.tick(now_ms, out)
        for key, value in out:
            self.outputs.add(self.topics.district_windows, key, compact(value))
            self.metrics.district_window(orjson.loads(value))

    def family_home(self, root: str) -> int:
        """The liveness partition of a family: its root's district's, so that one owner
        sees a whole district go silent."""
        return device_partition(district_key(self.registry, root), self.partitions)

    def flush_heard(self) -> None:
        """The devices heard since the last flush, as notes to their families' owners:
        one message per partition, not one per reading. (A crash loses at most these
        notes, which only makes a device look silent a little longer.)"""
        if not self.heard:
            return
        batches: dict[int, list[Heard]] = {}
        for device_id, (arrival, ts) in self.heard.items():
            root = root_of(self.registry, device_id)
            batches.setdefault(self.family_home(root), []).append(
                Heard(root, device_id, arrival, ts)
            )
        self.heard.clear()
        for part, notes in batches.items():
            value = compact(LivenessNotes(notes).encode())
            self.outputs.add(self.topics.liveness, None, value, part)

    def judge_liveness(self, now_ms: int) -> None:
        """One round over the families this worker owns: offline devices, and silent
        districts, as alert events."""
        if not self.ruleset.offline_enabled:
            return
        fired: list[dict[str, Any]] = []
        since = self.owned_since
        # Peeked once a round: a cold family decodes to a new object each time, and the
        # one the round changes is the one to write.
        judged: dict[str, Family] = {}

        def peek(root: str) -> Family | None:
            family = judged.get(root)
            if family is None and (family := self.families.peek(root)) is not None:
                judged[root] = family
            return family

        judge = self.liveness.round(now_ms, since, peek)
        check_due = self.check_due
        for root in self.family_partition:
            if check_due.get(root, 0) > now_ms:
                continue
            family = judge.peek(root)
            if family is not None:
                judge.family(root, family, fired)
        for root in judge.finish(fired):
            family = judged[root]
            self.families.set(root, family, self.family_partition[root])
            if self.liveness.any_offline(family):
                self.offline_roots.add(root)
            else:
                self.offline_roots.discard(root)
        for root, family in judged.items():
            check_due[root] = self.liveness.next_check(family, since)
        self._send_alerts(fired)

    def registry_changed(self) -> None:
        """The device registry changed: heartbeats may have, so every family is judged
        again at the next round."""
        self.metrics.registry_devices.set(len(self.registry))
        self.check_due.clear()

    # --- assignment --------------------------------------------------------------------
    def owned_state(self, assigned: Iterable[tuple[str, int]]) -> dict[str, set[int]]:
        """The state partitions (per store's changelog) that go with these input
        partitions: state partition p belongs to input partition p."""
        t = self.topics
        assigned = list(assigned)  # (read three times)
        devices = {p for topic, p in assigned if topic in t.device_inputs}
        districts = {p for topic, p in assigned if topic == t.by_district}
        families = {p for topic, p in assigned if topic == t.liveness}
        return {
            t.state_device: devices,
            t.state_district: districts,
            t.state_alerts: devices,
            t.state_liveness: families,
        }

    def assign(self, loaded: Mapping[str, dict[int, Records]], now_ms: int) -> None:
        """Hold exactly the state loaded from the changelogs (per store's topic), after a
        checkpoint wrote everything dirty: open windows are what the idle timer visits,
        and open episodes what the gauges count."""
        self.family_partition.clear()
        self.check_due.clear()
        for store in self.stores:
            partition_of = store.replace(loaded.get(store.topic, {}))
            if store is self.families:
                self.family_partition.update(partition_of)
        # Families kept where an earlier version routed them (by root, not district):
        # their notes go elsewhere now, so they would only go silent here.
        for root, part in list(self.family_partition.items()):
            if self.family_home(root) != part:
                del self.family_partition[root]
                self.families.forget(root)
        loaded_families = dict(self.families.items())  # (decoded once, for both uses)
        self.liveness.restore(loaded_families)
        self.owned_since = now_ms
        self.revoke()
        for key, state in self.device_states.items():
            if state.open:
                self.ingest.active[key] = device_partition(key, self.partitions)
        for key, dstate in self.district_states.items():
            if dstate.open:
                self.districts.active[key] = key_partition(key.encode(), self.partitions)
        self.alerting.with_episodes = {k for k, a in self.alert_states.items() if a.episodes}
        self.offline_roots = {k for k, f in loaded_families.items() if self.liveness.any_offline(f)}

    def revoke(self) -> None:
        """Partitions are leaving: nothing to visit until the next assignment."""
        self.ingest.active.clear()
        self.ingest.due.clear()
        self.districts.active.clear()

    # --- checkpoints -------------------------------------------------------------------
    def snapshot(self) -> list[Write]:
        """The changelog records of every state changed since the last snapshot. Take
        it at one instant with the outputs queued so far: they are what it records."""
        return [w for store in self.stores for w in store.collect()]

    def discard(self) -> None:
        """Forget what is not written (the group moved on: the changelogs are the truth)."""
        self.outputs.take()
        for store in self.stores:
            store.collect()

    # --- gauges ------------------------------------------------------------------------
    def refresh_gauges(self, now_ms: int) -> None:
        """Event-time lag, open episodes and offline devices per district."""
        metrics = self.metrics
        if self.newest:
            metrics.event_time_lag.set(max(0.0, (now_ms - self.newest) / 1000))
        episodes = self._episode_counts()
        offline: dict[tuple[str, str], int] = {}
        devices = self.registry.devices
        offline_severity = self.ruleset.offline_severity
        for root in list(self.offline_roots):
            family = self.families.peek(root)
            if family is None:
                continue
            for device_id, seen in family.devices.items():
                device = devices.get(device_id)
                if seen.offline_since < 0 or device is None:
                    continue
                if seen.alert_id:
                    k = ("device_offline", offline_severity, device.district)
                    episodes[k] = episodes.get(k, 0) + 1
                d = (device.district, device.kind)
                offline[d] = offline.get(d, 0) + 1
        metrics.episodes_active.clear()
        for (rule, severity, district), n in episodes.items():
            metrics.episodes_active.labels(rule, severity, district).set(n)
        metrics.district_offline.clear()
        for (district, kind), n in offline.items():
            metrics.district_offline.labels(district, kind).set(n)

    def _episode_counts(self) -> dict[tuple[str, str, str], int]:
        """Open rule episodes and district episodes, by rule, severity and district."""
        episodes: dict[tuple[str, str, str], int] = {}
        for device_id in list(self.alerting.with_episodes):
            state = self.alert_states.peek(device_id)
            if state is None:
                continue
            where = self.registry.devices.get(device_id)
            district = where.district if where is not None else UNKNOWN_KIND
            for episode in state.episodes.values():
                k = (episode.rule, episode.severity, district)
                episodes[k] = episodes.get(k, 0) + 1
        for district in self.liveness.scopes:
            k = (SCOPE_RULE, self.liveness.scope_severity, district)
            episodes[k] = episodes.get(k, 0) + 1
        return episodes
