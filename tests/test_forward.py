"""The forwarder's and the acknowledgements' pure parts, without a broker: episode
bookkeeping to Alertmanager alerts, outboxes, ack records and silences, the settings and
the command line's error paths."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from streams.metrics import ForwarderMetrics, exported_names
from streams.operators.acks import (
    ACK,
    UNACK,
    ack_record,
    describe_ack,
    parse_until,
    silence_for,
)
from streams.operators.episodes import (
    RUNBOOK_ANCHOR,
    Book,
    Outbox,
    Tracked,
    check_event,
    iso,
    labels_of,
)
from streams.settings import Settings, SettingsError
from streams.tools.cli import main

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"
NOW = 1_795_781_000_000
RESEND = 60_000
RUNBOOK = "https://example.org/README.md"


def event(status: str = "firing", **extra: Any) -> dict[str, Any]:
    return {
        "alert_id": "b7c1e2f04a9d4c1e",
        "rule": "classroom_co2_high",
        "status": status,
        "severity": "warning",
        "device_id": "dui-mitte-gs017-r12-air",
        "kind": "classroom_air",
        "district": "Mitte",
        "site": "gs017",
        "metric": "co2_ppm",
        "value": 1180.0,
        "threshold": 1000.0,
        "starts_at": NOW - 600_000,
        "ends_at": NOW - 1000 if status == "resolved" else None,
        "summary": "CO2 1180 ppm in gs017",
    } | extra


CRITICAL = {"rule": "classroom_co2_critical", "severity": "critical", "value": 2300.0}


def test_labels_identify_the_episode_and_carry_the_parent_where_there_is_one() -> None:
    assert labels_of(event(), "dui-mitte-gs017-ap1") == {
        "alertname": "classroom_co2_high",
        "severity": "warning",
        "alert_id": "b7c1e2f04a9d4c1e",
        "device_id": "dui-mitte-gs017-r12-air",
        "kind": "classroom_air",
        "district": "Mitte",
        "site": "gs017",
        "parent": "dui-mitte-gs017-ap1",
    }
    assert "parent" not in labels_of(event(), None)
    assert "site" not in labels_of(event(site=""), None)  # an empty value is no label


def test_a_firing_episode_is_posted_like_prometheus_does() -> None:
    book = Book()
    tracked = book.apply(event(), 0, 10)
    assert tracked is not None
    (alert,) = tracked.alerts(NOW, RESEND, RUNBOOK)
    assert alert["startsAt"] == iso(NOW - 600_000)
    assert alert["endsAt"] == iso(NOW + 4 * RESEND)  # re-posted before it runs out
    assert alert["annotations"] == {
        "summary": "CO2 1180 ppm in gs017",
        "alert_id": "b7c1e2f04a9d4c1e",
        "runbook_url": f"{RUNBOOK}#{RUNBOOK_ANCHOR}",
        "value": "1180",
        "threshold": "1000",
    }
    assert iso(1_795_780_800_123) == "2026-11-27T12:00:00.123Z"


def test_a_resolved_episode_gets_its_end_and_never_one_ahead_of_the_clock() -> None:
    book = Book()
    book.apply(event(), 0, 1)
    tracked = book.apply(event("resolved"), 0, 2)
    assert tracked is not None
    assert tracked.alerts(NOW, RESEND, RUNBOOK)[-1]["endsAt"] == iso(NOW - 1000)
    ahead = book.apply(event("resolved", alert_id="x", ends_at=NOW + 60_000), 0, 3)
    assert ahead is None  # (its firing was never seen)
    book.apply(event(alert_id="y", starts_at=NOW + 5000), 0, 4)  # a device clock ahead
    skewed = book.apply(
        event("resolved", alert_id="y", starts_at=NOW + 5000, ends_at=NOW + 60_000), 0, 5
    )
    assert skewed is not None
    (alert,) = skewed.alerts(NOW, RESEND, RUNBOOK)
    assert alert["startsAt"] == alert["endsAt"] == iso(NOW)


def test_an_escalation_keeps_one_active_alert_per_episode() -> None:
    book = Book()
    book.apply(event(), 0, 1)
    tracked = book.apply(event(**CRITICAL), 0, 2)
    assert tracked is not None
    old, new = tracked.alerts(NOW, RESEND, RUNBOOK)
    # The warning's label set ends now, the critical one fires: the same episode id.
    assert (old["labels"]["severity"], old["endsAt"]) == ("warning", iso(NOW))
    assert (new["labels"]["severity"], new["endsAt"]) == ("critical", iso(NOW + 4 * RESEND))
    assert old["labels"]["alert_id"] == new["labels"]["alert_id"]
    assert new["labels"]["alertname"] == "classroom_co2_critical"
    # Once every Alertmanager has it, the retired set is not sent again.
    assert book.settle(tracked.alert_id, NOW) is True
    assert len(tracked.alerts(NOW, RESEND, RUNBOOK)) == 1


def test_a_de_escalation_fires_the_earlier_set_again_without_ending_it() -> None:
    book = Book()
    book.apply(event(), 0, 1)
    book.apply(event(**CRITICAL), 0, 2)
    tracked = book.apply(event(), 0, 3)  # back to warning before anything was delivered
    assert tracked is not None
    alerts = tracked.alerts(NOW, RESEND, RUNBOOK)
    ended = {a["labels"]["severity"] for a in alerts if a["endsAt"] == iso(NOW)}
    firing = [a["labels"]["severity"] for a in alerts if a["endsAt"] != iso(NOW)]
    assert (ended, firing) == ({"critical"}, ["warning"])


def test_a_resolved_episode_never_comes_back() -> None:
    book = Book()
    book.apply(event(), 0, 1)
    book.apply(event("resolved"), 0, 2)
    assert book.apply(event(), 0, 3) is None  # a worker's at-least-once repeat
    assert book.settle("b7c1e2f04a9d4c1e", NOW) is True  # delivered everywhere: closed
    tracked = book.get("b7c1e2f04a9d4c1e")
    assert tracked is not None and tracked.closed_at == NOW
    assert tracked.alerts(NOW, RESEND, RUNBOOK) == []
    assert book.apply(event(), 1, 99) is None
    assert book.firing() == [] and book.unsettled() == []
    # The marker is forgotten after a day (a tombstone on the state topic).
    assert book.purge(NOW + 3600_000) == []
    assert book.purge(NOW + 25 * 3600_000) == ["b7c1e2f04a9d4c1e"]
    assert len(book) == 0


def test_an_event_at_or_before_the_applied_offset_is_a_replay() -> None:
    book = Book()
    book.apply(event(), 2, 50)
    assert book.apply(event(**CRITICAL), 2, 50) is None
    assert book.apply(event(**CRITICAL), 2, 51) is not None


def test_state_survives_encoding_and_restores_into_a_new_book() -> None:
    book = Book()
    book.apply(event(), 0, 1, parent="dui-mitte-gs017-ap1")
    tracked = book.apply(event(**CRITICAL), 0, 2)
    assert tracked is not None
    again = Book()
    again.restore(b"b7c1e2f04a9d4c1e", tracked.to_json())
    restored = again.get("b7c1e2f04a9d4c1e")
    assert restored is not None
    assert (restored.record, restored.src, restored.parent, restored.retired) == (
        tracked.record,
        (0, 2),
        "dui-mitte-gs017-ap1",
        tracked.retired,
    )
    again.restore(b"b7c1e2f04a9d4c1e", None)  # a tombstone
    assert again.get("b7c1e2f04a9d4c1e") is None


def test_an_outbox_keeps_what_is_not_delivered_and_its_age() -> None:
    outbox = Outbox()
    a = Tracked("a", event(alert_id="a"), version=1)
    b = Tracked("b", event(alert_id="b"), version=1)
    outbox.mark(a, NOW)
    outbox.mark(b, NOW + 1000, change=False)  # a resend is no change
    assert outbox.oldest_ms(NOW + 5000) == 5000
    items = outbox.take(10)
    a.version = 2
    outbox.mark(a, NOW + 2000)  # changed again while the post was on its way
    assert outbox.done(items) == ["b"]  # a's newer change is still due
    assert len(outbox) == 1 and outbox.oldest_ms(NOW + 5000) == 5000
    assert outbox.done(outbox.take(1)) == ["a"]
    assert outbox.oldest_ms(NOW + 9000) == 0


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        ([], "not a JSON object"),
        ({**event(), "alert_id": ""}, "no alert_id"),
        ({**event(), "status": "pending"}, "status is neither firing nor resolved"),
        ({**event(), "starts_at": "2026-11-27"}, "no integer starts_at"),
        (event(), None),
    ],
)
def test_events_that_cannot_be_forwarded_are_named(record: object, problem: str | None) -> None:
    assert check_event(record) == problem


def test_until_durations() -> None:
    assert parse_until("2h") == 7_200_000
    assert parse_until("1h30m") == 5_400_000
    assert parse_until("3d") == 3 * 86_400_000
    for bad in ("", "2 hours", "0s", "h2", "-1h"):
        with pytest.raises(ValueError, match="--until"):
            parse_until(bad)


def test_a_silence_matches_exactly_the_episode() -> None:
    silence = silence_for("abc", by="alice", comment="on it", now_ms=NOW, until_ms=NOW + 3600_000)
    assert silence["matchers"] == [
        {"name": "alert_id", "value": "abc", "isRegex": False, "isEqual": True}
    ]
    assert (silence["startsAt"], silence["endsAt"]) == (iso(NOW), iso(NOW + 3600_000))
    assert silence["createdBy"] == "alice" and "on it" in silence["comment"]


def test_ack_records_follow_their_schema_and_show_who() -> None:
    schema = json.loads((SCHEMAS / "alert-ack.schema.json").read_text())
    validator = Draft202012Validator(schema)
    ack = ack_record(ACK, event(), by="alice", at=NOW, comment="window open", until=NOW + 7200_000)
    unack = ack_record(UNACK, event(), by="bob", at=NOW)
    for record in (ack, unack):
        assert [e.message for e in validator.iter_errors(record)] == []
    line = describe_ack(ack)
    assert "ACKED" in line and "by alice" in line and "(window open)" in line
    assert line.endswith("(b7c1e2f04a9d4c1e)") and "dui-mitte-gs017-r12-air" in line
    assert "UNACKED" in describe_ack(unack)


def test_alertmanager_urls_are_a_comma_separated_list() -> None:
    settings = Settings.from_env(
        {"CITYSTREAMS_ALERTMANAGER_URL": "http://am-0:9093/, http://am-1:9093"}
    )
    assert settings.alertmanager_urls == ["http://am-0:9093", "http://am-1:9093"]
    assert Settings.from_env({}).alertmanager_urls == ["http://127.0.0.1:9093"]
    with pytest.raises(SettingsError, match="CITYSTREAMS_ALERTMANAGER_URL"):
        Settings.from_env({"CITYSTREAMS_ALERTMANAGER_URL": "am-0:9093"})


def test_forwarder_metrics_are_named_and_labelled_as_the_workers_are() -> None:
    metrics = ForwarderMetrics()
    metrics.posted.labels("http://am-0:9093").inc()
    metrics.failed.labels("http://am-0:9093", "unreachable").inc()
    names = exported_names(metrics.registry)
    for name in (
        "citystreams_forwarder_alerts_posted_total",
        "citystreams_forwarder_post_failures_total",
        "citystreams_forwarder_episodes_open",
        "citystreams_forwarder_oldest_unsent_change_seconds",
        "citystreams_forwarder_events_total",
    ):
        assert name in names
    for family in metrics.registry.collect():
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples)
        for s in family.samples:
            assert set(s.labels) <= {"alertmanager", "reason"}


@pytest.mark.parametrize(
    "argv",
    [
        ["alerts", "ack"],
        ["alerts", "ack", "abc"],
        ["alerts", "unack", "abc"],
        ["alerts", "ack", "abc", "--by", "alice", "--until", "soon"],
    ],
)
def test_ack_errors_are_one_line_and_exit_2(
    argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CITYSTREAMS_BROKER", "127.0.0.1:1")  # never reached
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("citystreams: ") and err.count("\n") == 1


def test_the_forwarder_and_operators_get_only_what_they_use() -> None:
    from streams.kafka.acls import Operation, forwarder_acls, operator_acls

    s = Settings.from_env({"CITYSTREAMS_TOPIC_PREFIX": "dev.", "CITYSTREAMS_APP_ID": "cs"})
    assert {(a.resource, a.operation) for a in forwarder_acls(s, "fwd")} == {
        ("dev.alerts", Operation.READ),
        ("dev.devices", Operation.READ),
        ("dev.cs.state.forwarder", Operation.READ),
        ("dev.cs.state.forwarder", Operation.WRITE),
        ("cs.alerts-forward", Operation.READ),
    }
    assert {(a.resource, a.operation) for a in operator_acls(s, "ops")} == {
        ("dev.cs.state.forwarder", Operation.READ),
        ("dev.alerts.acks", Operation.WRITE),
        ("dev.alerts.acks", Operation.READ),
        ("dev.alerts", Operation.READ),
    }
