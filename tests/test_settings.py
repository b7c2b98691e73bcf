from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from streams.settings import Settings, SettingsError, settings_table


def test_defaults_fit_together() -> None:
    s = Settings.from_env({})
    assert s.broker == "127.0.0.1:9092"
    assert s.broker_port == 9092  # `kafka start` listens where the worker looks
    assert s.bind == "127.0.0.1"
    assert s.topic_prefix == ""


def test_reads_and_parses_variables() -> None:
    s = Settings.from_env(
        {
            "CITYSTREAMS_BROKER": "127.0.0.1:19092",
            "CITYSTREAMS_PARTITIONS": "12",
            "CITYSTREAMS_STATE_DIR": "/var/lib/cs",
            "CITYSTREAMS_UNKNOWN_DEVICES": "PASS",
        }
    )
    assert (s.broker_port, s.partitions) == (19092, 12)
    assert s.kafka_dir == Path("/var/lib/cs/kafka")
    assert s.unknown_devices == "pass"


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("CITYSTREAMS_PARTITIONS", "zero"),
        ("CITYSTREAMS_PARTITIONS", "0"),
        ("CITYSTREAMS_METRICS_PORT", "70000"),
        ("CITYSTREAMS_UNKNOWN_DEVICES", "maybe"),
    ],
)
def test_bad_values_name_the_variable(var: str, value: str) -> None:
    with pytest.raises(SettingsError, match=var):
        Settings.from_env({var: value})


def test_frozen() -> None:
    s = Settings.from_env({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.broker = "elsewhere:1"  # type: ignore[misc]


def test_table_documents_every_variable() -> None:
    table = settings_table()
    for f in dataclasses.fields(Settings):
        assert f"`{f.metadata['env']}`" in table


def test_readme_table_is_current() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    assert settings_table() in readme, "regenerate with `citystreams settings --markdown`"
