"""TLS, SCRAM and ACLs against a real Kafka of our own in secure mode.

The module starts its own broker (the session's `broker` is plaintext): a SASL_SSL
listener with a certificate from a test CA made here with the openssl CLI, SCRAM users
for each principal, the StandardAuthorizer, and the ACLs of deploy/kafka/ACLS.md, created
by streams.kafka.acls. A real worker runs with the pipeline's credentials; the registry
and the readings are published by `citystreams registry load` and `citystreams send`
with their own principals; a downstream consumer reads the outputs with its own.
"""

from __future__ import annotations

import logging
import secrets
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    TopicAuthorizationFailedError,
)
from aiokafka.structs import ConsumerRecord

from streams.kafka.acls import consumer_acls, create_acls, ingest_acls, pipeline_acls, registry_acls
from streams.kafka.admin import ensure_topics
from streams.kafka.clients import client_kwargs
from streams.kafka.local import BrokerSecurity, LocalKafka
from streams.settings import Settings
from streams.topics import (
    ALERTS,
    INTERNAL,
    METRICS_DEVICE,
    TELEMETRY_ENRICHED,
    TELEMETRY_RAW,
    topic_specs,
)
from tests.conftest import ROOT, cli, free_port, spawn
from tests.kafkautil import read_records
from tests.tlsutil import make_certificates, needs_openssl

pytestmark = [pytest.mark.kafka, needs_openssl]

USERS = ("admin", "pipeline", "ingest", "registry", "dashboard")
REGISTRY = ROOT / "schemas" / "examples" / "recordings" / "classroom-devices.jsonl"


@dataclass
class SecureKafka:
    kafka: LocalKafka
    folder: Path

    @property
    def bootstrap(self) -> str:
        return self.kafka.bootstrap

    def password_file(self, user: str) -> Path:
        return self.folder / "users" / user

    def password(self, user: str) -> str:
        return self.password_file(user).read_text()

    def as_user(self, settings: Settings, user: str, password_file: Path | None = None) -> Settings:
        return replace(
            settings,
            broker=self.bootstrap,
            security_protocol="SASL_SSL",
            ssl_cafile=self.folder / "ca.pem",
            sasl_username=user,
            sasl_password_file=password_file or self.password_file(user),
        )


@pytest.fixture(scope="module")
def secure_kafka(
    tmp_path_factory: pytest.TempPathFactory, kafka_cache: Path
) -> Iterator[SecureKafka]:
    folder = tmp_path_factory.mktemp("secure-kafka")
    make_certificates(folder)
    (folder / "users").mkdir()
    for user in USERS:
        (folder / "users" / user).write_text(secrets.token_urlsafe(18) + "\n")
    settings = Settings.from_env(
        {},
        state_dir=folder / "state",
        kafka_cache=kafka_cache,
        kafka_controller_port=free_port(),
        partitions=3,
    )
    kafka = LocalKafka(settings, port=free_port(), security=BrokerSecurity.from_dir(folder))
    kafka.start()
    try:
        yield SecureKafka(kafka, folder)
    finally:
        kafka.stop()


@pytest.fixture
def base(tmp_path: Path) -> Settings:
    """This test's names (prefix, app id) and fast windows, with no credentials yet."""
    tag = uuid.uuid4().hex[:8]
    return Settings.from_env(
        {},
        topic_prefix=f"s{tag}.",
        app_id=f"citystreams-sec-{tag}",
        state_dir=tmp_path / "state",
        partitions=3,
        metrics_port=0,
        log_level="info",  # what an operator runs with: it must not show a secret either
        window_s=5,
        district_window_s=10,
        grace_s=1.0,
        window_idle_s=2.0,
    )


async def read_as(
    settings: Settings, topics: list[str], group: str, want: int, timeout: float
) -> list[ConsumerRecord[bytes, bytes]]:
    """Up to ``want`` records of ``topics``, read by a consumer of ``group``."""
    consumer = AIOKafkaConsumer(
        *topics, **client_kwargs(settings), group_id=group, auto_offset_reset="earliest"
    )
    return await read_records(consumer, want, timeout)


async def setup_cluster(secure: SecureKafka, base: Settings) -> Settings:
    """Contract topics and every principal's ACLs, as an admin; returns admin settings.

    The internal topics are left to the worker: its CREATE ACL on its own prefix is
    part of what is tested."""
    admin = secure.as_user(base, "admin")
    specs = topic_specs(base.topic_prefix, base.partitions, base.app_id)
    await ensure_topics(admin, [s for s in specs if s.base not in INTERNAL])
    await create_acls(
        admin,
        [
            *pipeline_acls(base, "pipeline"),
            *ingest_acls(base, "ingest"),
            *registry_acls(base, "registry"),
            *consumer_acls(base, "dashboard", [TELEMETRY_ENRICHED, METRICS_DEVICE], "dashboard"),
        ],
    )
    return admin


async def test_the_pipeline_works_with_its_credentials(
    secure_kafka: SecureKafka, base: Settings, tmp_path: Path
) -> None:
    await setup_cluster(secure_kafka, base)
    registry = cli(secure_kafka.as_user(base, "registry"), "registry", "load", str(REGISTRY))
    assert registry.returncode == 0, registry.stderr
    devices = [orjson.loads(line)["device_id"] for line in REGISTRY.read_bytes().splitlines()]

    log = tmp_path / "worker.log"
    pipeline = secure_kafka.as_user(base, "pipeline")
    worker = spawn(pipeline, "streams", "worker", log=log)
    try:
        # Event time a minute back: windows close on the idle timer without waiting.
        start = time.time_ns() // 1_000_000 - 60_000
        readings = [
            {"device_id": d, "ts": start + i * 1000, "seq": i + 1, "metrics": {"value": float(i)}}
            for d in devices
            for i in range(10)
        ]
        file = tmp_path / "readings.jsonl"
        file.write_bytes(b"\n".join(orjson.dumps(r) for r in readings) + b"\n")
        sent = cli(secure_kafka.as_user(base, "ingest"), "send", str(file))
        assert sent.returncode == 0, sent.stderr

        dashboard = secure_kafka.as_user(base, "dashboard")
        enriched = await read_as(
            dashboard, [base.topic_prefix + TELEMETRY_ENRICHED], "dashboard", len(readings), 60
        )
        windows = await read_as(dashboard, [base.topic_prefix + METRICS_DEVICE], "dashboard", 1, 30)
        assert worker.poll() is None, log.read_text()[-3000:]
    finally:
        worker.terminate()
        worker.wait(30)

    text = log.read_text()
    assert len(enriched) == len(readings), text[-3000:]
    assert {orjson.loads(r.value)["device_id"] for r in enriched} == set(devices)
    assert windows and orjson.loads(windows[0].value)["device_id"] in devices
    assert "AuthorizationFailed" not in text, text[-3000:]
    assert "Authenticated as pipeline via SCRAM-SHA-512" in text
    assert f"Kafka: {secure_kafka.bootstrap} over SASL_SSL, as pipeline (SCRAM-SHA-512)" in text
    for user in USERS:
        password = secure_kafka.password(user).strip()
        for output in (text, registry.stdout, registry.stderr, sent.stdout, sent.stderr):
            assert password not in output


async def test_a_client_without_credentials_is_refused(
    secure_kafka: SecureKafka, base: Settings
) -> None:
    # Plaintext to the TLS listener, and TLS (trusting the CA) without a SCRAM login.
    plain = AIOKafkaProducer(bootstrap_servers=secure_kafka.bootstrap, request_timeout_ms=5000)
    tls_only = replace(
        base,
        broker=secure_kafka.bootstrap,
        security_protocol="SSL",
        ssl_cafile=secure_kafka.folder / "ca.pem",
    )
    anonymous = AIOKafkaProducer(**client_kwargs(tls_only), request_timeout_ms=5000)
    for producer in (plain, anonymous):
        with pytest.raises(KafkaConnectionError):
            await producer.start()
        await producer.stop()


async def test_a_wrong_password_is_refused(
    secure_kafka: SecureKafka, base: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-" + secure_kafka.password("ingest"))
    settings = secure_kafka.as_user(base, "ingest", password_file=wrong)
    producer = AIOKafkaProducer(**client_kwargs(settings), request_timeout_ms=5000)
    with caplog.at_level(logging.ERROR, logger="aiokafka"), pytest.raises(KafkaConnectionError):
        await producer.start()
    await producer.stop()
    assert "SaslAuthenticationFailed" in caplog.text
    assert wrong.read_text() not in caplog.text

    # The command line says so in one line, without the password.
    (tmp_path / "r.jsonl").write_text('{"device_id": "x", "ts": 1, "metrics": {"v": 1}}\n')
    result = cli(settings, "send", str(tmp_path / "r.jsonl"))
    assert result.returncode == 1
    assert "CITYSTREAMS_SASL_" in result.stderr.splitlines()[-1]
    assert wrong.read_text() not in result.stderr + result.stdout


async def test_a_principal_without_the_acl_is_refused(
    secure_kafka: SecureKafka, base: Settings
) -> None:
    await setup_cluster(secure_kafka, base)
    # The dashboard reads outputs; it may not write raw telemetry...
    dashboard = secure_kafka.as_user(base, "dashboard")
    producer = AIOKafkaProducer(**client_kwargs(dashboard))
    await producer.start()
    try:
        with pytest.raises(TopicAuthorizationFailedError):
            await producer.send_and_wait(base.topic_prefix + TELEMETRY_RAW, b"{}", key=b"x")
    finally:
        await producer.stop()
    # ...nor commit in another group than its own.
    with pytest.raises(GroupAuthorizationFailedError):
        await read_as(dashboard, [base.topic_prefix + TELEMETRY_ENRICHED], base.app_id, 1, 10)

    # Ingest writes raw telemetry; it may not read the alerts (refused as the consumer
    # starts: it asks for the topic's metadata first).
    ingest = secure_kafka.as_user(base, "ingest")
    consumer = AIOKafkaConsumer(base.topic_prefix + ALERTS, **client_kwargs(ingest), group_id=None)
    try:
        with pytest.raises(TopicAuthorizationFailedError):
            await consumer.start()
    finally:
        await consumer.stop()
