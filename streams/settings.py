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
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PREFIX = "CITYSTREAMS_"
EXACTLY_ONCE = "exactly_once"


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


def _upper_choice(*options: str) -> Callable[[str], str]:
    """Like :func:`_choice` for names Kafka spells in capitals (`SASL_SSL`)."""

    def parse(raw: str) -> str:
        value = raw.strip().upper()
        if value not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {raw!r}")
        return value

    return parse


def _url_list(raw: str) -> str:
    """A comma-separated list of http(s) base URLs (kept as written)."""
    urls = [u.strip() for u in raw.split(",") if u.strip()]
    if not urls:
        raise ValueError("expected at least one URL")
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"expected http:// or https:// URLs, got {url!r}")
    return raw


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
    # --- Kafka security ----------------------------------------------------------
    # Secrets are never values of a variable (they would show in `ps e`, in the
    # environment dumps of crash reports and in `citystreams settings`): a variable
    # names the file, and streams/kafka/clients.py reads it when a client connects.
    security_protocol: str = _setting(
        "SECURITY_PROTOCOL",
        "PLAINTEXT",
        "How clients talk to Kafka: `PLAINTEXT`, `SSL` (TLS), `SASL_PLAINTEXT` or "
        "`SASL_SSL` (TLS and a SCRAM login; what a shared cluster should use).",
        _upper_choice("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
    )
    ssl_cafile: Path | None = _setting(
        "SSL_CAFILE",
        None,
        "PEM file of the CA certificates that sign the brokers' certificates (`SSL`, "
        "`SASL_SSL`); empty: the system's CAs. Broker host names are always verified.",
        Path,
    )
    ssl_certfile: Path | None = _setting(
        "SSL_CERTFILE",
        None,
        "PEM client certificate (chain), for brokers that require TLS client "
        "authentication; empty: none.",
        Path,
    )
    ssl_keyfile: Path | None = _setting(
        "SSL_KEYFILE",
        None,
        "PEM private key of `CITYSTREAMS_SSL_CERTFILE`; empty: the key is in the certificate file.",
        Path,
    )
    ssl_key_password_file: Path | None = _setting(
        "SSL_KEY_PASSWORD_FILE",
        None,
        "File holding the password of an encrypted `CITYSTREAMS_SSL_KEYFILE`; empty: "
        "the key is not encrypted.",
        Path,
    )
    sasl_mechanism: str = _setting(
        "SASL_MECHANISM",
        "SCRAM-SHA-512",
        "SASL mechanism (`SASL_*` protocols): `SCRAM-SHA-512` or `SCRAM-SHA-256`. "
        "(`PLAIN` is not offered: it sends the password itself.)",
        _upper_choice("SCRAM-SHA-512", "SCRAM-SHA-256"),
    )
    sasl_username: str = _setting(
        "SASL_USERNAME",
        "",
        "SCRAM user name, the principal the ACLs of deploy/kafka/ACLS.md are granted to "
        "(`SASL_*` protocols).",
    )
    sasl_password_file: Path | None = _setting(
        "SASL_PASSWORD_FILE",
        None,
        "File holding the SCRAM password (`SASL_*` protocols; trailing newline "
        "ignored). Read when a client connects; there is no variable for the password "
        "itself.",
        Path,
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
    state_cache_keys: int = _setting(
        "STATE_CACHE_KEYS",
        20_000,
        "Keys of each state store (devices' windows, their alert rules, liveness "
        "families) a worker keeps decoded; beyond it state waits encoded (~0.5 KB a "
        "device instead of ~2.5 KB) and is decoded when touched (~5 us per reading).",
        _positive_int,
    )
    state_flush_ms: int = _setting(
        "STATE_FLUSH_MS",
        1000,
        "How often changed per-device state is written to its changelog (ms); also "
        "written before every rebalance and shutdown.",
        _positive_int,
    )
    processing_guarantee: str = _setting(
        "PROCESSING_GUARANTEE",
        "at_least_once",
        "`at_least_once`: a worker killed between writing an output and committing its "
        "input writes that output again, identical (consumers de-duplicate on the "
        "contract's keys). `exactly_once`: each checkpoint's outputs, state and input "
        "offsets are one Kafka transaction; consumers that read with "
        "`isolation.level=read_committed` see every output once. Costs latency (outputs "
        "become visible at the checkpoint, every `STATE_FLUSH_MS`) and some throughput.",
        _choice("at_least_once", "exactly_once"),
    )
    instance_id: str = _setting(
        "INSTANCE_ID",
        socket.gethostname,
        "Stable name of this worker among the app's workers (exactly-once: its "
        "transactional id is `<app id>-<instance id>`, so a restarted worker fences "
        "its previous incarnation and aborts its open transaction at once). Give each "
        "worker of a host its own, e.g. a StatefulSet's pod name.",
    )
    transaction_timeout_s: float = _setting(
        "TRANSACTION_TIMEOUT_S",
        8.0,
        "Exactly-once: the broker aborts a transaction left open this long (a worker "
        "that died and did not come back under the same instance id, or one cut off "
        "from the broker). Shorter than the worker's 10 s group session, so a cut-off "
        "worker's transaction is aborted about when its partitions move; a worker whose "
        "transaction was aborted stops (exit code 70) and is restarted by its "
        "supervisor.",
        _positive_float,
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
        "end plus the grace and from its first device window (see streams/stages/windows.py).",
        _positive_float,
    )

    rules: str = _setting(
        "RULES",
        "",
        "Alert rules file (TOML) that replaces the shipped streams/stages/default_rules.toml; "
        "empty: the shipped rules. A file that cannot be used stops the worker at start.",
    )

    # --- operators: the Alertmanager forwarder and acknowledgements ---------------
    alertmanager_url: str = _setting(
        "ALERTMANAGER_URL",
        "http://127.0.0.1:9093",
        "Alertmanager(s) that `citystreams alerts forward` keeps equal to the open alert "
        "episodes and where `alerts ack` creates silences: a comma-separated list of base "
        "URLs; every one gets every alert (an HA cluster's members, as Prometheus does).",
        _url_list,
    )
    alertmanager_resend_s: float = _setting(
        "ALERTMANAGER_RESEND_S",
        60.0,
        "How often the forwarder posts every firing episode again (Prometheus's "
        "`resend_delay`); each post says it ends 4 times this later, so it must stay "
        "shorter than Alertmanager's `resolve_timeout` (5 m) over 4.",
        _positive_float,
    )
    alertmanager_timeout_s: float = _setting(
        "ALERTMANAGER_TIMEOUT_S",
        5.0,
        "Timeout of one request to an Alertmanager (s).",
        _positive_float,
    )
    alertmanager_retry_max_s: float = _setting(
        "ALERTMANAGER_RETRY_MAX_S",
        30.0,
        "Longest wait between retries to an Alertmanager that does not answer "
        "(exponential backoff from 0.5 s); changes wait, none is dropped.",
        _positive_float,
    )
    forwarder_metrics_port: int = _setting(
        "FORWARDER_METRICS_PORT",
        9109,
        "Port of the forwarder's `/metrics` (on `CITYSTREAMS_BIND`); 0 picks any free port.",
        _port,
    )
    runbook_base: str = _setting(
        "RUNBOOK_BASE",
        "https://github.com/citystreams/citystreams/blob/main/README.md",
        "Where the `runbook_url` annotation of forwarded alerts points (`#anchor` added).",
    )

    def __post_init__(self) -> None:
        if self.district_window_s % self.window_s:
            raise SettingsError(
                f"CITYSTREAMS_DISTRICT_WINDOW_S ({self.district_window_s}) must be a multiple "
                f"of CITYSTREAMS_WINDOW_S ({self.window_s})"
            )
        self._check_security()

    def _check_security(self) -> None:
        """Combinations that cannot work, or that would silently not do what the
        operator meant (a user name with a protocol that sends none), fail at start.
        Whether the files exist is checked when a client connects (streams/kafka/clients.py),
        so that a secret mounted after the process started is still found."""
        protocol = self.security_protocol
        sasl = protocol.startswith("SASL_")
        tls = protocol.endswith("SSL")
        if sasl and not self.sasl_username:
            raise SettingsError(
                f"CITYSTREAMS_SECURITY_PROTOCOL={protocol} needs CITYSTREAMS_SASL_USERNAME"
            )
        if sasl and self.sasl_password_file is None:
            raise SettingsError(
                f"CITYSTREAMS_SECURITY_PROTOCOL={protocol} needs CITYSTREAMS_SASL_PASSWORD_FILE "
                "(a file holding the password)"
            )
        if not sasl:
            for name, value in (
                ("CITYSTREAMS_SASL_USERNAME", self.sasl_username),
                ("CITYSTREAMS_SASL_PASSWORD_FILE", self.sasl_password_file),
            ):
                if value:
                    raise SettingsError(
                        f"{name} is set but CITYSTREAMS_SECURITY_PROTOCOL={protocol} does not "
                        "log in: use SASL_SSL (or SASL_PLAINTEXT), or unset it"
                    )
        if not tls:
            for name, value in (
                ("CITYSTREAMS_SSL_CAFILE", self.ssl_cafile),
                ("CITYSTREAMS_SSL_CERTFILE", self.ssl_certfile),
                ("CITYSTREAMS_SSL_KEYFILE", self.ssl_keyfile),
                ("CITYSTREAMS_SSL_KEY_PASSWORD_FILE", self.ssl_key_password_file),
            ):
                if value is not None:
                    raise SettingsError(
                        f"{name} is set but CITYSTREAMS_SECURITY_PROTOCOL={protocol} does not "
                        "use TLS: use SSL or SASL_SSL, or unset it"
                    )
        if self.ssl_certfile is None:
            for name, value in (
                ("CITYSTREAMS_SSL_KEYFILE", self.ssl_keyfile),
                ("CITYSTREAMS_SSL_KEY_PASSWORD_FILE", self.ssl_key_password_file),
            ):
                if value is not None:
                    raise SettingsError(f"{name} is set without CITYSTREAMS_SSL_CERTFILE")

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
        # An unset optional file is the empty string, which from_env reads as unset.
        return {
            f.metadata["env"]: "" if (value := getattr(self, f.name)) is None else str(value)
            for f in dataclasses.fields(self)
        }

    # --- derived values ------------------------------------------------------------
    @property
    def alertmanager_urls(self) -> list[str]:
        """The Alertmanagers, without trailing slashes."""
        return [u.strip().rstrip("/") for u in self.alertmanager_url.split(",") if u.strip()]

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
            default = f"`{f.default}`" if f.default not in ("", None) else "(empty)"
        else:
            default = f"`{_describe_factory(f.name)}`"
        rows.append(f"| `{f.metadata['env']}` | {default} | {f.metadata['doc']} |")
    return "\n".join(rows)


def _describe_factory(name: str) -> str:
    return {
        "state_dir": "~/.local/state/citystreams",
        "instance_id": "the host name",
        "kafka_cache": "~/.cache/citystreams/kafka",
    }[name]
