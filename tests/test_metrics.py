"""The metrics module on a fresh registry per test: bounded labels, series of partitions
a worker no longer owns removed, every metric documented and named by the rules."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from streams.metrics import Metrics, exported_names


def text(m: Metrics) -> str:
    return generate_latest(m.registry).decode()


def test_city_gauges_take_only_the_metrics_a_kind_reports() -> None:
    m = Metrics(CollectorRegistry())
    m.district_window(
        {
            "district": "Mitte",
            "kind": "classroom_air",
            "devices": 12,
            "metrics": {
                "co2_ppm": {"count": 72, "min": 400.0, "max": 1300.0, "mean": 800.0, "p95": 1200.0},
                "made_up_by_a_device": {"count": 1, "min": 1, "max": 1, "mean": 1, "p95": 1},
            },
        }
    )
    out = text(m)
    assert (
        'citystreams_district_metric{district="Mitte",kind="classroom_air",'
        'metric="co2_ppm",stat="p95"} 1200.0' in out
    )
    assert "made_up_by_a_device" not in out
    assert (
        'citystreams_district_devices_reporting{district="Mitte",kind="classroom_air"} 12.0' in out
    )


def test_series_of_partitions_no_longer_owned_go_after_a_rebalance() -> None:
    m = Metrics(CollectorRegistry())
    m.consumer_lag.labels("telemetry.raw", "3").set(42)
    m.episodes_active.labels("classroom_co2_high", "warning", "Mitte").set(1)
    m.district_window({"district": "Mitte", "kind": "traffic", "devices": 3, "metrics": {}})
    assert 'partition="3"' in text(m)
    m.forget_partitions()
    out = text(m)
    assert 'partition="3"' not in out and "classroom_co2_high" not in out
    assert "citystreams_district_devices_reporting{" not in out
    # Counters stay: they are totals of what this worker did.
    assert 'citystreams_district_windows_total{district="Mitte",kind="traffic"} 1.0' in out


def test_names_share_the_prefix_counters_end_in_total_and_every_metric_has_help() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    for family in registry.collect():
        if family.name.startswith("process_"):
            continue
        assert family.name.startswith("citystreams_"), family.name
        assert family.documentation, family.name
    names = exported_names(registry)
    counters = [f.name for f in registry.collect() if f.type == "counter"]
    assert all(f"{c}_total" in names for c in counters)
