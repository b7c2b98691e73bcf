"""Every Prometheus metric of a worker, in one place, on a registry tests can replace.

Names share the ``citystreams_`` prefix, counters end in ``_total``, units are base
units, and no label ever carries a device id: label values come from closed sets
(dead-letter reasons, input topics and the partitions this worker owns, rules of the
rules file, districts of the registry, kinds, and the metric names of
:data:`streams.devices.KIND_METRICS`), so the number of series is bounded whatever
device ids arrive. The bound, with D districts in the registry, R rules, P partitions:

    series <= FIXED + 3 * P + D * (3 * (R + 1) + 3 * 20 + 3 * 7)

(FIXED ~ 120 counters, histogram buckets and process metrics; open episodes per rule,
severity and district; 20 allow-listed city metrics of 7 kinds with 3 statistics each;
devices reporting and offline and windows closed per district and kind).
``tests/test_metrics_kafka.py`` counts it with 100,000 device ids.
"""

from __future__ import annotations

import logging
import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    start_http_server,
)

from streams import __version__
from streams.devices import KIND_METRICS
from streams.stages.validate import REASONS

log = logging.getLogger(__name__)

PREFIX = "citystreams"


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)  # process_cpu_seconds_total, memory, open fds
        self.messages_in = Counter(
            f"{PREFIX}_messages_in_total", "Kafka messages read from telemetry.raw.", registry=r
        )
        self.readings_in = Counter(
            f"{PREFIX}_readings_in_total",
            "Readings read from telemetry.raw (a gateway batch counts each reading).",
            registry=r,
        )
        self.readings_valid = Counter(
            f"{PREFIX}_readings_valid_total",
            "Readings that passed validation, de-duplication and enrichment.",
            registry=r,
        )
        self.deadletters = Counter(
            f"{PREFIX}_deadletters_total",
            "Readings or messages sent to telemetry.deadletter, by reason.",
            ["reason"],
            registry=r,
        )
        # Pre-bound children: `.labels()` on the hot path costs ~1 us, `.inc()` ~0.4 us.
        self.deadletter_by_reason = {reason: self.deadletters.labels(reason) for reason in REASONS}
        self.duplicates = Counter(
            f"{PREFIX}_duplicates_total",
            "Readings dropped because their (device_id, seq) was already seen.",
            registry=r,
        )
        self.seq_resets = Counter(
            f"{PREFIX}_seq_resets_total",
            "Devices whose seq jumped far back (a restarted counter), accepted as new.",
            registry=r,
        )
        self.forwarded = Counter(
            f"{PREFIX}_readings_forwarded_total",
            "Readings of gateway batches forwarded to their device's partition.",
            registry=r,
        )
        self.windows_emitted = Counter(
            f"{PREFIX}_windows_emitted_total",
            "Window aggregates published, by level (device or district).",
            ["level"],
            registry=r,
        )
        self.windows_emitted_device = self.windows_emitted.labels("device")
        self.windows_emitted_district = self.windows_emitted.labels("district")
        self.late_device_windows = Counter(
            f"{PREFIX}_late_device_windows_total",
            "Device windows that arrived after their district window had closed (dropped).",
            registry=r,
        )
        self.district_input_errors = Counter(
            f"{PREFIX}_district_input_errors_total",
            "Unreadable records on the internal district input topic (ignored).",
            registry=r,
        )
        self.registry_devices = Gauge(
            f"{PREFIX}_registry_devices", "Devices in this worker's registry.", registry=r
        )
        self.registry_errors = Counter(
            f"{PREFIX}_registry_errors_total",
            "Records of the devices topic that were malformed and ignored.",
            registry=r,
        )

        self.alerts = Counter(
            f"{PREFIX}_alert_events_total",
            "Alert events published on the alerts topic, by rule, severity and status "
            "(rules come from the rules file: a bounded set).",
            ["rule", "severity", "status"],
            registry=r,
        )
        self.liveness_input_errors = Counter(
            f"{PREFIX}_liveness_input_errors_total",
            "Unreadable records on the internal liveness topic (ignored).",
            registry=r,
        )

        # --- pipeline health -------------------------------------------------------------
        self.processing_latency = Histogram(
            f"{PREFIX}_processing_latency_seconds",
            "From a telemetry.raw message's append to Kafka to its outputs being queued.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.event_time_lag = Gauge(
            f"{PREFIX}_event_time_lag_seconds",
            "Wall clock minus the newest event time accepted by this worker.",
            registry=r,
        )
        self.consumer_lag = Gauge(
            f"{PREFIX}_consumer_lag_records",
            "Records not yet processed, per input partition this worker owns.",
            ["topic", "partition"],
            registry=r,
        )
        self.rebalances = Counter(
            f"{PREFIX}_rebalances_total", "Partition assignments this worker received.", registry=r
        )
        self.partitions_owned = Gauge(
            f"{PREFIX}_partitions_owned", "Input partitions this worker owns.", registry=r
        )
        self.info = Info(f"{PREFIX}_worker", "This worker's version.", registry=r)
        self.info.info({"version": __version__})
        self.episodes_active = Gauge(
            f"{PREFIX}_alert_episodes_active",
            "Open alert episodes on this worker's partitions, by rule (device_offline "
            "included), severity and district.",
            ["rule", "severity", "district"],
            registry=r,
        )
        # --- the city, for the dashboards (per district and kind, never per device) -------
        self.district_metric = Gauge(
            f"{PREFIX}_district_metric",
            "The latest closed district window's statistic of a metric, by district and "
            "kind; only the metrics each kind is known to report (registry.KIND_METRICS).",
            ["district", "kind", "metric", "stat"],
            registry=r,
        )
        self.district_devices = Gauge(
            f"{PREFIX}_district_devices_reporting",
            "Devices that reported in the latest closed district window.",
            ["district", "kind"],
            registry=r,
        )
        self.district_offline = Gauge(
            f"{PREFIX}_district_devices_offline",
            "Devices judged offline (own alert or covered by a parent's), by district and "
            "kind, among the families this worker owns: sum over workers.",
            ["district", "kind"],
            registry=r,
        )

        self.district_windows = Counter(
            f"{PREFIX}_district_windows_total",
            "District windows closed, by district and kind (no increase: no data).",
            ["district", "kind"],
            registry=r,
        )

    def district_window(self, record: dict[str, object]) -> None:
        """A closed district window: the city gauges of its district and kind."""
        district, kind = str(record["district"]), str(record["kind"])
        self.district_windows.labels(district, kind).inc()
        allowed = KIND_METRICS.get(kind, ())
        metrics = record.get("metrics")
        if not isinstance(metrics, dict):
            return
        for name, stats in metrics.items():
            if name in allowed and isinstance(stats, dict):
                for stat in ("mean", "max", "p95"):
                    value = stats.get(stat)
                    if isinstance(value, int | float):
                        self.district_metric.labels(district, kind, name, stat).set(value)
        devices = record.get("devices")
        if isinstance(devices, int):
            self.district_devices.labels(district, kind).set(devices)

    def forget_partitions(self) -> None:
        """After a rebalance: series about what this worker no longer owns go away (the
        other owner exports them now)."""
        for gauge in (
            self.consumer_lag,
            self.district_metric,
            self.district_devices,
            self.district_offline,
            self.episodes_active,
        ):
            gauge.clear()

    def alert_event(self, rule: str, severity: str, status: str) -> None:
        self.alerts.labels(rule, severity, status).inc()

    def deadletter(self, reason: str) -> None:
        child = self.deadletter_by_reason.get(reason)
        if child is None:  # a reason outside REASONS is a bug, but must not crash
            child = self.deadletter_by_reason.setdefault(reason, self.deadletters.labels(reason))
        child.inc()


class ForwarderMetrics:
    """The metrics of ``citystreams alerts forward`` (its own process and registry).

    Labels: ``alertmanager`` (a URL of CITYSTREAMS_ALERTMANAGER_URL, a set the operator
    configures) and ``reason`` (``unreachable`` or ``rejected``): never a device or an
    alert id."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        self.events = Counter(
            f"{PREFIX}_forwarder_events_total",
            "Alert events read from the alerts topic by the forwarder.",
            registry=r,
        )
        self.posted = Counter(
            f"{PREFIX}_forwarder_alerts_posted_total",
            "Alerts an Alertmanager accepted (POST /api/v2/alerts), resends included.",
            ["alertmanager"],
            registry=r,
        )
        self.failed = Counter(
            f"{PREFIX}_forwarder_post_failures_total",
            "Requests to an Alertmanager that failed: unreachable (retried with backoff) "
            "or rejected (a 4xx: not retried).",
            ["alertmanager", "reason"],
            registry=r,
        )
        self.open = Gauge(
            f"{PREFIX}_forwarder_episodes_open",
            "Open alert episodes the forwarder keeps in Alertmanager.",
            registry=r,
        )
        self.assigned = Gauge(
            f"{PREFIX}_forwarder_partitions_assigned",
            "Partitions of the alerts topic this forwarder reads (0: not reading yet, or "
            "another forwarder of the group has them).",
            registry=r,
        )
        self.oldest_unsent = Gauge(
            f"{PREFIX}_forwarder_oldest_unsent_change_seconds",
            "Age of the oldest episode change not yet delivered to an Alertmanager (0: none).",
            ["alertmanager"],
            registry=r,
        )


def serve(
    metrics: Metrics | ForwarderMetrics, bind: str, port: int, tries: int = 16
) -> tuple[WSGIServer, int]:
    """Serve ``/metrics`` on the first free port from ``port`` (0: any free port)."""
    last: OSError | None = None
    candidates = [0] if port == 0 else range(port, min(port + tries, 65536))
    for candidate in candidates:
        try:
            server, thread = start_http_server(candidate, addr=bind, registry=metrics.registry)
        except OSError as exc:
            last = exc
            continue
        actual = int(server.server_port)
        log.info("serving /metrics on http://%s:%d/metrics", bind, actual)
        assert isinstance(thread, threading.Thread)
        return server, actual
    raise OSError(f"no free port for /metrics in {port}-{port + tries - 1} on {bind}: {last}")


def free_port(bind: str) -> int:
    """A port nobody listens on at the moment (for a worker whose address we print)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((bind, 0))
        return int(s.getsockname()[1])


def port_free(bind: str, port: int) -> bool:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((bind, port))
        except OSError:
            return False
        return True


def exported_names(registry: CollectorRegistry) -> set[str]:
    """Every sample name ``registry`` can export (also of metrics with no series yet):
    what rules and dashboards may reference."""
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_count", "_sum"),
        "info": ("_info",),
        "summary": ("_count", "_sum"),
    }
    names: set[str] = set()
    for family in registry.collect():
        for suffix in suffixes.get(family.type, ("",)):
            names.add(family.name + suffix)
    return names
