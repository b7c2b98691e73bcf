"""Every Prometheus metric of a worker, in one place, on a registry tests can replace.

Names share the ``citystreams_`` prefix, counters end in ``_total``, units are base
units, and no label ever carries a device id: label values come from closed sets
(dead-letter reasons, partitions this worker owns), so the number of series is
bounded whatever device ids arrive.
"""

from __future__ import annotations

import logging
import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from streams.validate import REASONS

log = logging.getLogger(__name__)

PREFIX = "citystreams"


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
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

    def alert_event(self, rule: str, severity: str, status: str) -> None:
        self.alerts.labels(rule, severity, status).inc()

    def deadletter(self, reason: str) -> None:
        child = self.deadletter_by_reason.get(reason)
        if child is None:  # a reason outside REASONS is a bug, but must not crash
            child = self.deadletter_by_reason.setdefault(reason, self.deadletters.labels(reason))
        child.inc()


def serve(metrics: Metrics, bind: str, port: int, tries: int = 16) -> tuple[WSGIServer, int]:
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
