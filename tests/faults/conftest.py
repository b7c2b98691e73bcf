"""The battery's own broker: like the session's, plus a second listener that clients
reach through a proxy the test controls (scenario 5), and killable (scenario 4)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from streams.kafka.local import LocalKafka
from streams.settings import Settings
from tests.conftest import free_port


@dataclass(frozen=True)
class BatteryKafka:
    kafka: LocalKafka
    bootstrap: str  # direct, for the test's own clients
    proxied_port: int  # the listener behind the proxy
    proxy_port: int  # where the proxy must listen (the address that listener advertises)

    @property
    def via_proxy(self) -> str:
        return f"127.0.0.1:{self.proxy_port}"


def start_battery_kafka(folder: Path, kafka_cache: Path) -> BatteryKafka:
    port, proxied, controller, proxy = free_port(), free_port(), free_port(), free_port()
    settings = Settings.from_env(
        {},
        state_dir=folder,
        kafka_cache=kafka_cache,
        kafka_controller_port=controller,
        partitions=6,
    )
    # Clients bootstrapping through the proxy are told the proxy's address for the
    # PROXIED listener, so all their traffic keeps going through it.
    kafka = LocalKafka(
        settings,
        port=port,
        properties={
            "listeners": (
                f"PLAINTEXT://127.0.0.1:{port},PROXIED://127.0.0.1:{proxied},"
                f"CONTROLLER://127.0.0.1:{controller}"
            ),
            "advertised.listeners": (f"PLAINTEXT://127.0.0.1:{port},PROXIED://127.0.0.1:{proxy}"),
            "listener.security.protocol.map": (
                "PLAINTEXT:PLAINTEXT,PROXIED:PLAINTEXT,CONTROLLER:PLAINTEXT"
            ),
        },
    )
    kafka.start()
    return BatteryKafka(kafka, kafka.bootstrap, proxied, proxy)


@pytest.fixture(scope="session")
def battery_kafka(
    tmp_path_factory: pytest.TempPathFactory, kafka_cache: Path
) -> Iterator[BatteryKafka]:
    battery = start_battery_kafka(tmp_path_factory.mktemp("battery-kafka"), kafka_cache)
    yield battery
    battery.kafka.stop()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The battery's figures, one line per scenario, at the end of every run (CI's log
    included: they are the numbers the reliability claims rest on)."""
    from tests.faults.scenario import FIGURES

    if FIGURES:
        terminalreporter.section("fault battery figures")
        for line in FIGURES:
            terminalreporter.write_line(line)
