"""Grafana dashboards, generated from code so they cannot drift from the metrics.

``python -m streams.tools.dashboards deploy/grafana/dashboards`` writes them; a test checks
that the committed JSON is what this module generates and that every expression reads
only metrics the workers export or the recording rules in ``deploy/prometheus/``
define.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson

DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
WIDTH = 24


class Board:
    """Panels laid out left to right, top to bottom."""

    def __init__(self, uid: str, title: str, description: str) -> None:
        self.uid, self.title, self.description = uid, title, description
        self.panels: list[dict[str, Any]] = []
        self.variables: list[dict[str, Any]] = []
        self.x = self.y = self.row_h = 0

    def _place(self, w: int, h: int) -> dict[str, int]:
        if self.x + w > WIDTH:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        pos = {"x": self.x, "y": self.y, "w": w, "h": h}
        self.x += w
        self.row_h = max(self.row_h, h)
        return pos

    def panel(
        self,
        kind: str,
        title: str,
        targets: list[tuple[str, str]],
        *,
        w: int = 12,
        h: int = 8,
        unit: str = "short",
        description: str = "",
        options: dict[str, Any] | None = None,
        instant: bool = False,
        color: str | None = None,
    ) -> None:
        panel: dict[str, Any] = {
            "id": len(self.panels) + 1,
            "type": kind,
            "title": title,
            "description": description,
            "datasource": DATASOURCE,
            "gridPos": self._place(w, h),
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "targets": [
                {
                    "refId": chr(ord("A") + i),
                    "datasource": DATASOURCE,
                    "expr": expr,
                    "legendFormat": legend,
                    **({"instant": True, "format": "table"} if instant else {}),
                }
                for i, (expr, legend) in enumerate(targets)
            ],
        }
        if options:
            panel["options"] = options
        if color:
            panel["fieldConfig"]["defaults"]["color"] = {"mode": "fixed", "fixedColor": color}
        self.panels.append(panel)

    def variable(self, name: str, query: str, label: str) -> None:
        self.variables.append(
            {
                "name": name,
                "label": label,
                "type": "query",
                "datasource": DATASOURCE,
                "query": {"query": query, "refId": name},
                "definition": query,
                "refresh": 2,
                "sort": 1,
                "includeAll": False,
                "multi": False,
            }
        )

    def json(self) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": ["citystreams"],
            "schemaVersion": 39,
            "version": 1,
            "editable": True,
            "time": {"from": "now-6h", "to": "now"},
            "refresh": "30s",
            "timezone": "Europe/Berlin",
            "templating": {"list": self.variables},
            "panels": self.panels,
        }


def _city_metric(kind: str, metric: str, stat: str, by: str = "district") -> str:
    return (
        f'max by ({by}) (citystreams_district_metric{{kind="{kind}", metric="{metric}", '
        f'stat="{stat}"}})'
    )


def city_overview() -> dict[str, Any]:
    b = Board(
        "citystreams-city",
        "citystreams / City overview",
        "Duisburg at a glance: districts, open alerts, CO2 in schools, air quality, 5G.",
    )
    for severity, colour in (("critical", "red"), ("warning", "orange"), ("info", "blue")):
        b.panel(
            "stat",
            f"Open {severity} alerts",
            [
                (
                    f'sum(citystreams:alert_episodes_active:sum{{severity="{severity}"}})'
                    " or vector(0)",
                    "",
                )
            ],
            w=6,
            h=4,
            options={"colorMode": "background", "graphMode": "none"},
            color=colour,
            description=f"Open alert episodes of severity {severity}, all rules.",
        )
    b.panel(
        "stat",
        "Devices offline",
        [("sum(citystreams:district_devices_offline:sum) or vector(0)", "")],
        w=6,
        h=4,
        description="Devices silent past k x their heartbeat (own alert or behind a parent).",
    )
    b.panel(
        "table",
        "Districts",
        [
            ("sum by (district) (citystreams_district_devices_reporting)", "reporting"),
            ("sum by (district) (citystreams:district_devices_offline:sum)", "offline"),
            ("sum by (district) (citystreams_alert_episodes_active)", "open alerts"),
            (_city_metric("classroom_air", "co2_ppm", "p95"), "school CO2 p95"),
            (_city_metric("air_quality", "no2_ugm3", "mean"), "NO2"),
        ],
        w=24,
        h=9,
        instant=True,
        options={"showHeader": True},
        description="Per district: devices reporting and offline, open alerts, school CO2 "
        "(p95 of the latest 5-minute window) and NO2.",
    )
    b.panel(
        "timeseries",
        "CO2 in schools (p95 per district)",
        [(_city_metric("classroom_air", "co2_ppm", "p95"), "{{district}}")],
        unit="ppm",
        description="1000 ppm: ventilate (UBA); 2000 ppm: unacceptable.",
    )
    b.panel(
        "timeseries",
        "Air quality: NO2 and PM10 (mean per district)",
        [
            (_city_metric("air_quality", "no2_ugm3", "mean"), "NO2 {{district}}"),
            (_city_metric("air_quality", "pm10_ugm3", "mean"), "PM10 {{district}}"),
        ],
        unit="conμgm3",
        description="EU limits: NO2 200 ug/m3 hourly mean, PM10 50 ug/m3 daily mean.",
    )
    b.panel(
        "timeseries",
        "5G load (mean and max PRB use per district)",
        [
            (_city_metric("cell_5g", "prb_util_pct", "mean"), "mean {{district}}"),
            (_city_metric("cell_5g", "prb_util_pct", "max"), "max {{district}}"),
        ],
        unit="percent",
    )
    b.panel(
        "timeseries",
        "Open alerts by rule",
        [("sum by (rule) (citystreams:alert_episodes_active:sum)", "{{rule}}")],
    )
    return b.json()


def pipeline_health() -> dict[str, Any]:
    b = Board(
        "citystreams-pipeline",
        "citystreams / Pipeline health",
        "Throughput, latency, lag and dead letters of the workers.",
    )
    b.panel("stat", "Workers up", [('sum(up{job="citystreams"})', "")], w=6, h=4)
    b.panel(
        "stat",
        "Readings / s",
        [("citystreams:readings_in:rate1m", "")],
        w=6,
        h=4,
        unit="reqps",
    )
    b.panel(
        "stat",
        "Dead-letter ratio",
        [("citystreams:deadletter_ratio:rate5m", "")],
        w=6,
        h=4,
        unit="percentunit",
    )
    b.panel(
        "stat",
        "Event-time lag",
        [("max(citystreams_event_time_lag_seconds)", "")],
        w=6,
        h=4,
        unit="s",
    )
    b.panel(
        "timeseries",
        "Readings in and valid",
        [
            ("citystreams:readings_in:rate1m", "in"),
            ("citystreams:readings_valid:rate1m", "valid"),
            ("sum(rate(citystreams_duplicates_total[1m]))", "duplicates"),
        ],
        unit="reqps",
    )
    b.panel(
        "timeseries",
        "Dead letters by reason",
        [("citystreams:deadletters:rate5m", "{{reason}}")],
        unit="reqps",
    )
    b.panel(
        "timeseries",
        "Processing latency (message append to outputs queued)",
        [
            ("citystreams:processing_latency_seconds:p50_5m", "p50"),
            ("citystreams:processing_latency_seconds:p99_5m", "p99"),
        ],
        unit="s",
    )
    b.panel(
        "timeseries",
        "Consumer lag by input topic",
        [("citystreams:consumer_lag:sum", "{{topic}}")],
        description="Records not yet processed; growing for 10 minutes raises an alert.",
    )
    b.panel(
        "timeseries",
        "Windows and alert events",
        [
            ("sum by (level) (rate(citystreams_windows_emitted_total[5m]))", "windows {{level}}"),
            ("sum by (status) (rate(citystreams_alert_events_total[5m]))", "alerts {{status}}"),
        ],
        unit="reqps",
    )
    b.panel(
        "timeseries",
        "Rebalances and partitions",
        [
            ("sum(increase(citystreams_rebalances_total[15m]))", "rebalances / 15 min"),
            ("sum by (instance) (citystreams_partitions_owned)", "partitions {{instance}}"),
        ],
    )
    b.panel(
        "timeseries",
        "Worker memory and CPU",
        [
            (
                'sum by (instance) (process_resident_memory_bytes{job="citystreams"})',
                "rss {{instance}}",
            ),
            (
                'sum by (instance) (rate(process_cpu_seconds_total{job="citystreams"}[5m]))',
                "cpu {{instance}}",
            ),
        ],
        w=24,
    )
    return b.json()


SELECTED = 'district="$district", kind="$kind"'


def district_drilldown() -> dict[str, Any]:
    b = Board(
        "citystreams-district",
        "citystreams / District drill-down",
        "One district and device kind: every metric's mean, max and p95 per 5-minute "
        "window, devices reporting and offline. Per-device data is on the metrics.device "
        "topic (Prometheus never carries device ids).",
    )
    b.variable("district", "label_values(citystreams_district_metric, district)", "District")
    b.variable(
        "kind", 'label_values(citystreams_district_metric{district="$district"}, kind)', "Kind"
    )
    b.panel(
        "timeseries",
        "Devices reporting and offline",
        [
            (
                'sum(citystreams_district_devices_reporting{district="$district", kind="$kind"})',
                "reporting",
            ),
            (
                'sum(citystreams:district_devices_offline:sum{district="$district", kind="$kind"})',
                "offline",
            ),
        ],
        w=24,
    )
    b.panel(
        "timeseries",
        "$kind in $district: mean, max and p95 by metric",
        [
            (
                'max by (metric, stat) (citystreams_district_metric{district="$district", '
                'kind="$kind"})',
                "{{metric}} {{stat}}",
            )
        ],
        w=24,
        h=12,
    )
    return b.json()


ALERTMANAGER = {"type": "alertmanager", "uid": "alertmanager"}


def _alert_list(b: Board) -> None:
    """Grafana's alert list panel over the Alertmanager data source: the alerts that
    carry an alert_id (one per episode, from the forwarder), silenced ones included."""
    b.panels.append(
        {
            "id": len(b.panels) + 1,
            "type": "alertlist",
            "title": "Open alert episodes",
            "description": "One alert per episode: rule, severity, device, kind, district, "
            "site, parent. Silenced alerts are acknowledged ones; `citystreams alerts ack "
            "<alert_id> --by <you>` acknowledges.",
            "datasource": ALERTMANAGER,
            "gridPos": b._place(24, 14),
            "targets": [],
            "options": {
                "viewMode": "list",
                "groupMode": "default",
                "groupBy": [],
                "maxItems": 500,
                "sortOrder": 3,  # by importance: critical first
                "dashboardAlerts": False,
                "alertName": "",
                "alertInstanceLabelFilter": '{alert_id=~".+"}',
                "datasource": "Alertmanager",
                "showInstances": True,
                "stateFilter": {
                    "firing": True,
                    "pending": True,
                    "noData": False,
                    "normal": False,
                    "error": True,
                },
            },
        }
    )


def open_alerts() -> dict[str, Any]:
    """Every open alert episode, per device, from Alertmanager (where `citystreams
    alerts forward` keeps them), with its silenced (acknowledged) state; and the
    forwarder's health."""
    b = Board(
        "citystreams-open-alerts",
        "citystreams / Open alerts",
        "Every open alert episode, per device, as Alertmanager holds it (citystreams alerts "
        "forward); silenced means acknowledged (citystreams alerts ack).",
    )
    _alert_list(b)
    b.panel(
        "text",
        "Acknowledged and silenced",
        [],
        w=24,
        h=3,
        options={
            "mode": "markdown",
            "content": "Every episode with its state (active, or suppressed: acknowledged "
            "or inhibited) and its silences: [Alert groups of the Alertmanager data "
            "source](/alerting/groups?alertmanager=Alertmanager&groupBy=alertname"
            "&groupBy=district).",
        },
    )
    for severity, colour in (("critical", "red"), ("warning", "orange"), ("info", "blue")):
        b.panel(
            "stat",
            f"Open {severity} episodes",
            [(f'sum(citystreams_alert_episodes_active{{severity="{severity}"}}) or vector(0)', "")],
            w=6,
            h=4,
            options={"colorMode": "background", "graphMode": "none"},
            color=colour,
        )
    b.panel(
        "stat",
        "Episodes in Alertmanager",
        [("sum(citystreams_forwarder_episodes_open) or vector(0)", "")],
        w=6,
        h=4,
        description="Open episodes the forwarder keeps in Alertmanager; equals the sum of "
        "the three before it when the forwarder is up to date.",
    )
    b.panel(
        "timeseries",
        "Oldest change not yet in Alertmanager",
        [
            (
                "max by (alertmanager) (citystreams_forwarder_oldest_unsent_change_seconds)",
                "{{alertmanager}}",
            )
        ],
        unit="s",
        description="0 when every Alertmanager has every change; grows while one cannot be "
        "reached (the forwarder retries with backoff and drops nothing).",
    )
    b.panel(
        "timeseries",
        "Alerts posted and failed posts",
        [
            (
                "sum by (alertmanager) (rate(citystreams_forwarder_alerts_posted_total[5m]))",
                "posted {{alertmanager}}",
            ),
            (
                "sum by (alertmanager, reason) "
                "(rate(citystreams_forwarder_post_failures_total[5m]))",
                "failed {{alertmanager}} {{reason}}",
            ),
        ],
        unit="ops",
    )
    return b.json()


DASHBOARDS = {
    "city-overview.json": city_overview,
    "pipeline-health.json": pipeline_health,
    "district-drilldown.json": district_drilldown,
    "open-alerts.json": open_alerts,
}


def render(build: Any) -> bytes:
    return orjson.dumps(build(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def expressions(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    return exprs + [v["definition"] for v in dashboard["templating"]["list"]]


def main(argv: list[str]) -> int:
    out = Path(argv[0] if argv else "deploy/grafana/dashboards")
    out.mkdir(parents=True, exist_ok=True)
    for name, build in DASHBOARDS.items():
        (out / name).write_bytes(render(build))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
