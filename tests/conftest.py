"""Shared fixtures: one real Kafka broker per test session, and helpers around it."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from streams.kafka.local import LocalKafka
from streams.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def kafka_cache() -> Path:
    # The jars are fetched once per machine (CI fetches them before the tests).
    return Settings.from_env().kafka_cache


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory, kafka_cache: Path) -> Iterator[str]:
    """The bootstrap address of a real Apache Kafka, started once for the session.

    ``CITYSTREAMS_TEST_BROKER`` points the tests at a broker that is already running.
    """
    external = os.environ.get("CITYSTREAMS_TEST_BROKER")
    if external:
        yield external
        return
    port, controller = free_port(), free_port()
    settings = Settings.from_env(
        {},
        state_dir=tmp_path_factory.mktemp("kafka-state"),
        kafka_cache=kafka_cache,
        kafka_controller_port=controller,
        partitions=3,
    )
    kafka = LocalKafka(settings, port=port)
    kafka.start()
    yield kafka.bootstrap
    kafka.stop()


@pytest.fixture
def settings(broker: str, tmp_path: Path) -> Settings:
    """Settings for one test: its own topic prefix and consumer group, so tests never
    see each other's records."""
    tag = uuid.uuid4().hex[:8]
    return Settings.from_env(
        {},
        broker=broker,
        topic_prefix=f"t{tag}.",
        app_id=f"citystreams-test-{tag}",
        state_dir=tmp_path / "state",
        partitions=3,
        metrics_port=0,
        log_level="warning",
    )


def env_for(settings: Settings) -> dict[str, str]:
    """The environment that makes a subprocess see ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITYSTREAMS_")}
    env.update(settings.to_env())
    env["PYTHONPATH"] = str(ROOT)
    return env


def cli(settings: Settings, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``citystreams <args>`` with ``settings``, run to its end (``timeout`` s at most)."""
    return subprocess.run(
        [sys.executable, "-m", "streams", *args],
        env=env_for(settings),
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
        timeout=timeout,
    )


async def until(what: str, check: Callable[[], Any], timeout: float, every: float = 0.1) -> Any:
    """``check()`` (in a thread) until it returns something true; an OSError counts as
    not yet (a daemon still starting). Fails the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = await asyncio.to_thread(check)
            if last:
                return last
        except OSError:
            pass
        await asyncio.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


def spawn(settings: Settings, *args: str, log: Path) -> subprocess.Popen[bytes]:
    """Start ``python -m <args>`` with ``settings`` in its environment."""
    out = open(log, "wb")  # noqa: SIM115 - closed with the process by the caller
    return subprocess.Popen(
        [sys.executable, "-m", *args],
        env=env_for(settings),
        stdout=out,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
