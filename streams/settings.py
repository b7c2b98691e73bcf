"""The one reader of the environment.

Every knob of citystreams is a ``CITYSTREAMS_*`` variable, declared once below with
its type, default and meaning; the README's settings table is generated from the
same declarations (``citystreams settings --markdown``) so the two cannot drift.
Everything else in the package receives a frozen :class:`Settings` and never looks
at ``os.environ`` itself.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PREFIX = "CITYSTREAMS_"


def _home() -> Path:
    return Path(os.path.expanduser("~"))


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError(f"expected a positive integer, got {raw!r}")
    return value


def _port(raw: str) -> int:
    value = int(raw)
    if not 0 <= value <= 65535:
        raise ValueError(f"expected a port number 0-65535, got {raw!r}")
    return value


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not value > 0:
        raise ValueError(f"expected a positive number, got {raw!r}")
    return value


def _choice(*options: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {raw!r}")
        return value

    return parse


def _setting(env: str, default: Any, doc: str, parse: Callable[[str], Any] = str) -> Any:
    """A field backed by ``CITYSTREAMS_<env>``; ``default`` may be a zero-argument callable."""
    meta = {"env": PREFIX + env, "doc": doc, "parse": parse}
    if callable(default):
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta)


class SettingsError(ValueError):
    """A variable is set to a value that cannot be used; the message names it."""


@dataclass(frozen=True, slots=True)
class Settings:
    # --- Kafka -------------------------------------------------------------------
    broker: str = _setting(
        "BROKER",
        "127.0.0.1:9092",
        "Kafka bootstrap address (host:port). `citystreams kafka start` listens on this port "
        "when the host is loopback, so the defaults find each other.",
    )
    topic_prefix: str = _setting(
        "TOPIC_PREFIX", "", "Prefix of every contract topic name, e.g. `dev.` (default: none)."
    )
    partitions: int = _setting(
        "PARTITIONS", 6, "Partitions of the topics citystreams creates.", _positive_int
    )
    replication: int = _setting(
        "REPLICATION", 1, "Replication factor of the topics citystreams creates.", _positive_int
    )
    app_id: str = _setting(
        "APP_ID",
        "citystreams",
        "Consumer group of the workers; also names their internal changelog topics.",
    )
    # --- local state and the project-managed broker --------------------------------
    state_dir: Path = _setting(
        "STATE_DIR",
        lambda: _home() / ".local" / "state" / "citystreams",
        "Where the local Kafka's data (`kafka/`) and the workers' state (`worker/`) live.",
        Path,
    )
    kafka_cache: Path = _setting(
        "KAFKA_CACHE",
        lambda: _home() / ".cache" / "citystreams" / "kafka",
        "Where Kafka's jars are fetched once from Maven Central and reused offline.",
        Path,
    )
    kafka_controller_port: int = _setting(
        "KAFKA_CONTROLLER_PORT",
        0,
        "Port of the local Kafka's KRaft controller listener; 0 means the broker port + 1.",
        _port,
    )
    kafka_heap: str = _setting(
        "KAFKA_HEAP", "512m", "Maximum JVM heap of the local Kafka (`-Xmx`)."
    )
    java: str = _setting(
        "JAVA", "java", "The Java 17+ executable that runs the local Kafka (name or path)."
    )
    # --- worker ------------------------------------------------------------------
    bind: str = _setting(
        "BIND",
        "127.0.0.1",
        "Address the worker's HTTP endpoints (`/metrics`) bind to. Loopback unless you "
        "mean to expose them.",
    )
    metrics_port: int = _setting(
        "METRICS_PORT",
        9108,
        "First port tried for `/metrics`; a worker whose port is taken tries the next 15, "
        "so several workers can run side by side. 0 picks any free port.",
        _port,
    )
    log_level: str = _setting(
        "LOG_LEVEL",
        "info",
        "Log level of the worker and the commands.",
        _choice("debug", "info", "warning", "error"),
    )
    # --- ingest ------------------------------------------------------------------
    max_message_bytes: int = _setting(
        "MAX_MESSAGE_BYTES",
        65536,
        "Largest accepted telemetry message; bigger ones are dead-lettered as `too_large`.",
        _positive_int,
    )
    max_future_s: float = _setting(
        "MAX_FUTURE_S",
        300.0,
        "Readings whose `ts` is more than this many seconds ahead of the worker's clock "
        "are dead-lettered (`ts_future`).",
        _positive_float,
    )
    max_past_s: float = _setting(
        "MAX_PAST_S",
        86400.0,
        "Readings whose `ts` is more than this many seconds behind the worker's clock "
        "are dead-lettered (`ts_past`).",
        _positive_float,
    )
    unknown_devices: str = _setting(
        "UNKNOWN_DEVICES",
        "deadletter",
        "What happens to readings from a device missing from the registry: `deadletter` "
        "(reason `unknown_device`) or `pass` (enriched as `kind: unknown`).",
        _choice("deadletter", "pass"),
    )

    emit_enriched: bool = _setting(
        "EMIT_ENRICHED",
        True,
        "Publish every valid reading with its registry data on `telemetry.enriched`.",
        _bool,
    )
    state_flush_ms: int = _setting(
        "STATE_FLUSH_MS",
        1000,
        "How often changed per-device state is written to its changelog (ms); also "
        "written before every rebalance and shutdown.",
        _positive_int,
    )

    # --- windows -----------------------------------------------------------------
    window_s: int = _setting(
        "WINDOW_S", 60, "Size of the per-device tumbling event-time windows (s).", _positive_int
    )
    district_window_s: int = _setting(
        "DISTRICT_WINDOW_S",
        300,
        "Size of the per-district-and-kind windows (s); a multiple of the device window.",
        _positive_int,
    )
    grace_s: float = _setting(
        "GRACE_S",
        10.0,
        "Allowed lateness: a device's watermark is its highest event time minus this. "
        "Readings for a window that has closed are dead-lettered (`late`).",
        _positive_float,
    )
    window_idle_s: float = _setting(
        "WINDOW_IDLE_S",
        10.0,
        "A device silent this long (wall clock) has its windows closed once their end "
        "plus the grace has passed, without waiting for newer readings.",
        _positive_float,
    )
    district_wait_s: float = _setting(
        "DISTRICT_WAIT_S",
        70.0,
        "Longest wait for a district window's slow or silent devices, counted from its "
        "end plus the grace and from its first device window (see streams/windows.py).",
        _positive_float,
    )

    rules: str = _setting(
        "RULES",
        "",
        "Alert rules file (TOML) that replaces the shipped streams/default_rules.toml; "
        "empty: the shipped rules. A file that cannot be used stops the worker at start.",
    )

    def __post_init__(self) -> None:
        if self.district_window_s % self.window_s:
            raise SettingsError(
                f"CITYSTREAMS_DISTRICT_WINDOW_S ({self.district_window_s}) must be a multiple "
                f"of CITYSTREAMS_WINDOW_S ({self.window_s})"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read every ``CITYSTREAMS_*`` variable; ``overrides`` win over the environment."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(f.metadata["env"])
            if raw is None or raw == "":
                continue
            try:
                values[f.name] = f.metadata["parse"](raw)
            except ValueError as exc:
                raise SettingsError(f"{f.metadata['env']}: {exc}") from None
        parsers = {f.name: f.metadata["parse"] for f in dataclasses.fields(cls)}
        for name, value in overrides.items():
            # Overrides given as text (CLI flags, tests) go through the same parsing.
            values[name] = parsers[name](value) if isinstance(value, str) else value
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The ``CITYSTREAMS_*`` variables that make a subprocess see these settings."""
        return {f.metadata["env"]: str(getattr(self, f.name)) for f in dataclasses.fields(self)}

    # --- derived values ------------------------------------------------------------
    @property
    def broker_port(self) -> int:
        host_port = self.broker.split(",")[0]
        try:
            return int(host_port.rsplit(":", 1)[1])
        except (IndexError, ValueError):
            raise SettingsError(
                f"CITYSTREAMS_BROKER: expected host:port, got {self.broker!r}"
            ) from None

    @property
    def kafka_dir(self) -> Path:
        return self.state_dir / "kafka"

    @property
    def worker_dir(self) -> Path:
        return self.state_dir / "worker"


def settings_table() -> str:
    """The README's settings table, straight from the declarations."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for f in dataclasses.fields(Settings):
        if f.default is not dataclasses.MISSING:
            default = f"`{f.default}`" if f.default != "" else "(empty)"
        else:
            default = f"`{_describe_factory(f.name)}`"
        rows.append(f"| `{f.metadata['env']}` | {default} | {f.metadata['doc']} |")
    return "\n".join(rows)


def _describe_factory(name: str) -> str:
    return {
        "state_dir": "~/.local/state/citystreams",
        "kafka_cache": "~/.cache/citystreams/kafka",
    }[name]
