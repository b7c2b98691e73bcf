"""Every topic name of the contract, once.

The names below are the contract's (``shared/contract.md``); the settings' prefix is
applied by :func:`topic_name` and nowhere else, so code and tests that need a topic
ask for it by constant.
"""

from __future__ import annotations

from dataclasses import dataclass

TELEMETRY_RAW = "telemetry.raw"
DEVICES = "devices"
DEADLETTER = "telemetry.deadletter"
METRICS_DEVICE = "metrics.device"
METRICS_DISTRICT = "metrics.district"
ALERTS = "alerts"

CONTRACT_TOPICS: tuple[str, ...] = (
    TELEMETRY_RAW,
    DEVICES,
    DEADLETTER,
    METRICS_DEVICE,
    METRICS_DISTRICT,
    ALERTS,
)

# Additive to the contract: every valid reading with its registry data, for downstream
# services that want readings rather than windows (documented in schemas/).
TELEMETRY_ENRICHED = "telemetry.enriched"
# Additive to the contract, compacted: operators' acknowledgements of alert episodes,
# keyed by alert_id (`citystreams alerts ack`; schemas/alert-ack.schema.json).
ALERT_ACKS = "alerts.acks"
# Internal: readings of gateway batches forwarded to their device's partition.
TELEMETRY_BY_DEVICE = "telemetry.bydevice"
# Internal: closed device windows, keyed by (district, kind), for the district stage.
WINDOWS_BY_DISTRICT = "windows.bydistrict"
# Internal, compacted: per-device and per-district window state (streams/state.py).
STATE_DEVICE = "state.device"
STATE_DISTRICT = "state.district"
STATE_ALERTS = "state.alerts"
# Internal: "device D was heard", on the partition of the district of D's family (the
# root of its parent chain): streams/stages/liveness.py.
LIVENESS_BY_ROOT = "liveness.byroot"
STATE_LIVENESS = "state.liveness"
# Internal, compacted, read whole by every worker: devices' latest occupancy values.
OCCUPANCY = "occupancy.latest"
# Internal, compacted: the Alertmanager forwarder's open episodes, keyed by alert_id
# (streams/operators/forwarder.py), so a restarted forwarder knows them without the
# retention of `alerts`.
STATE_FORWARDER = "state.forwarder"


COMPACTED: tuple[str, ...] = (
    DEVICES,
    STATE_DEVICE,
    STATE_DISTRICT,
    STATE_ALERTS,
    STATE_LIVENESS,
    OCCUPANCY,
    ALERT_ACKS,
    STATE_FORWARDER,
)
# Partition p of each of these holds the same keys' data: one count for all of them.
COPARTITIONED: tuple[str, ...] = (
    TELEMETRY_RAW,
    TELEMETRY_BY_DEVICE,
    WINDOWS_BY_DISTRICT,
    STATE_DEVICE,
    STATE_DISTRICT,
    STATE_ALERTS,
    LIVENESS_BY_ROOT,
    STATE_LIVENESS,
)


# The pipeline's own topics: they belong to one app (one consumer group), so two apps
# with the same prefix (a second deployment, a benchmark) never share state.
INTERNAL: tuple[str, ...] = (
    TELEMETRY_BY_DEVICE,
    WINDOWS_BY_DISTRICT,
    STATE_DEVICE,
    STATE_DISTRICT,
    STATE_ALERTS,
    LIVENESS_BY_ROOT,
    STATE_LIVENESS,
    OCCUPANCY,
    STATE_FORWARDER,
)

ALL_TOPICS: tuple[str, ...] = (*CONTRACT_TOPICS, TELEMETRY_ENRICHED, ALERT_ACKS, *INTERNAL)
# What the alerts forwarder and operators' acknowledgements use, and a worker does not:
# a worker creates every topic but these at its start (under ACLs a worker may not
# even see them: it would take them for missing, and be refused creating them).
OPERATOR_TOPICS: tuple[str, ...] = (ALERT_ACKS, STATE_FORWARDER)


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str]
    base: str = ""  # the name without prefix or app id ("" for topics not of this module)


def topic_name(prefix: str, base: str, app_id: str = "") -> str:
    """``<prefix><base>``; an internal topic is ``<prefix><app_id>.<base>``."""
    if base in INTERNAL and app_id:
        return f"{prefix}{app_id}.{base}"
    return f"{prefix}{base}"


def topic_specs(prefix: str, partitions: int, app_id: str = "") -> list[TopicSpec]:
    """What ``citystreams topics create`` makes: every topic; ``devices`` and the state
    topics compacted.

    ``devices`` is small and read whole by every worker, so it keeps the same partition
    count only for uniformity; compaction keeps the newest record per device and drops
    a tombstoned device's history. A state topic's partition p holds the state of input
    partition p, so it must have the same count.
    """
    specs = []
    for base in ALL_TOPICS:
        config: dict[str, str] = {}
        if base in COMPACTED:
            config = {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"}
        specs.append(TopicSpec(topic_name(prefix, base, app_id), partitions, config, base))
    return specs


@dataclass(frozen=True, slots=True)
class TopicNames:
    """Every topic one worker reads or writes, by its full name (prefix and app id
    applied): what the pipeline core, the runtime and the test driver share."""

    raw: str
    devices: str
    deadletter: str
    enriched: str
    device_windows: str
    district_windows: str
    alerts: str
    by_device: str
    by_district: str
    liveness: str
    occupancy: str
    state_device: str
    state_district: str
    state_alerts: str
    state_liveness: str

    @classmethod
    def of(cls, prefix: str, app_id: str) -> TopicNames:
        def name(base: str) -> str:
            return topic_name(prefix, base, app_id)

        return cls(
            raw=name(TELEMETRY_RAW),
            devices=name(DEVICES),
            deadletter=name(DEADLETTER),
            enriched=name(TELEMETRY_ENRICHED),
            device_windows=name(METRICS_DEVICE),
            district_windows=name(METRICS_DISTRICT),
            alerts=name(ALERTS),
            by_device=name(TELEMETRY_BY_DEVICE),
            by_district=name(WINDOWS_BY_DISTRICT),
            liveness=name(LIVENESS_BY_ROOT),
            occupancy=name(OCCUPANCY),
            state_device=name(STATE_DEVICE),
            state_district=name(STATE_DISTRICT),
            state_alerts=name(STATE_ALERTS),
            state_liveness=name(STATE_LIVENESS),
        )

    @property
    def inputs(self) -> tuple[str, str, str, str]:
        """What a worker reads, in reading order."""
        return (self.raw, self.by_device, self.by_district, self.liveness)

    @property
    def device_inputs(self) -> frozenset[str]:
        """The inputs keyed by device: their partition p owns the devices of p."""
        return frozenset((self.raw, self.by_device))
