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
# Internal: readings of gateway batches forwarded to their device's partition.
TELEMETRY_BY_DEVICE = "telemetry.bydevice"
# Internal: closed device windows, keyed by (district, kind), for the district stage.
WINDOWS_BY_DISTRICT = "windows.bydistrict"

ALL_TOPICS: tuple[str, ...] = (
    *CONTRACT_TOPICS,
    TELEMETRY_ENRICHED,
    TELEMETRY_BY_DEVICE,
    WINDOWS_BY_DISTRICT,
)


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str]


def topic_name(prefix: str, base: str) -> str:
    return f"{prefix}{base}"


def topic_specs(prefix: str, partitions: int) -> list[TopicSpec]:
    """What ``citystreams topics create`` makes: every topic, ``devices`` compacted.

    ``devices`` is small and read whole by every worker, so it keeps the same partition
    count only for uniformity; compaction keeps the newest record per device and drops
    a tombstoned device's history.
    """
    specs = []
    for base in ALL_TOPICS:
        config: dict[str, str] = {}
        if base == DEVICES:
            config = {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"}
        specs.append(TopicSpec(topic_name(prefix, base), partitions, config))
    return specs
