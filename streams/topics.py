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
# Internal: "device D was heard", keyed by the root of D's parent chain (streams/liveness.py).
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
