"""Kafka security without a broker: settings, client options, secrets, the ACL model."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from streams.kafka.acls import (
    Acl,
    Operation,
    PatternType,
    ResourceType,
    acl_commands,
    acl_markdown,
    consumer_acls,
    example_acls,
    ingest_acls,
    pipeline_acls,
    registry_acls,
)
from streams.kafka.clients import (
    Secret,
    SecurityError,
    client_kwargs,
    describe,
    faust_credentials,
    read_secret,
)
from streams.kafka.local import BrokerSecurity, KafkaError
from streams.settings import Settings, SettingsError
from streams.topics import (
    ALERTS,
    CONTRACT_TOPICS,
    DEVICES,
    INTERNAL,
    METRICS_DISTRICT,
    STATE_DEVICE,
    TELEMETRY_ENRICHED,
    TELEMETRY_RAW,
    topic_name,
)
from tests.conftest import ROOT
from tests.tlsutil import encrypt_key, make_certificates, needs_openssl

PASSWORD = "s3cr3t-Pa55word-that-must-not-leak"


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "kafka-password"
    path.write_text(PASSWORD + "\n")  # as an editor or `echo` leaves it
    return path


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl")
    folder = tmp_path_factory.mktemp("certs")
    make_certificates(folder)
    return folder


def sasl_env(password_file: Path, **extra: str) -> dict[str, str]:
    return {
        "CITYSTREAMS_SECURITY_PROTOCOL": "sasl_ssl",
        "CITYSTREAMS_SASL_USERNAME": "pipeline",
        "CITYSTREAMS_SASL_PASSWORD_FILE": str(password_file),
        **extra,
    }


# --- settings -------------------------------------------------------------------------


def test_plaintext_by_default() -> None:
    s = Settings.from_env({})
    assert s.security_protocol == "PLAINTEXT"
    assert s.sasl_mechanism == "SCRAM-SHA-512"
    assert (s.ssl_cafile, s.sasl_password_file, s.sasl_username) == (None, None, "")
    assert client_kwargs(s) == {"bootstrap_servers": s.broker, "security_protocol": "PLAINTEXT"}
    assert faust_credentials(s) is None


def test_reads_the_security_variables(password_file: Path) -> None:
    s = Settings.from_env(
        sasl_env(
            password_file,
            CITYSTREAMS_SSL_CAFILE="/etc/ca.pem",
            CITYSTREAMS_SASL_MECHANISM="scram-sha-256",
        )
    )
    assert s.security_protocol == "SASL_SSL"  # Kafka's spelling, whatever was typed
    assert s.sasl_mechanism == "SCRAM-SHA-256"
    assert s.ssl_cafile == Path("/etc/ca.pem")
    assert s.sasl_password_file == password_file


def test_to_env_round_trips(password_file: Path) -> None:
    # Subprocesses (workers started by `up`, the tests) get the settings through it.
    for s in (
        Settings.from_env({}),
        Settings.from_env(sasl_env(password_file, CITYSTREAMS_SSL_CAFILE="/etc/ca.pem")),
    ):
        env = s.to_env()
        assert Settings.from_env(env) == s
        assert PASSWORD not in "".join(env.values())
    assert Settings.from_env({}).to_env()["CITYSTREAMS_SSL_CAFILE"] == ""


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CITYSTREAMS_SECURITY_PROTOCOL": "TLS"}, "CITYSTREAMS_SECURITY_PROTOCOL"),
        ({"CITYSTREAMS_SASL_MECHANISM": "PLAIN"}, "CITYSTREAMS_SASL_MECHANISM"),
        ({"CITYSTREAMS_SECURITY_PROTOCOL": "SASL_SSL"}, "needs CITYSTREAMS_SASL_USERNAME"),
        (
            {"CITYSTREAMS_SECURITY_PROTOCOL": "SASL_SSL", "CITYSTREAMS_SASL_USERNAME": "p"},
            "needs CITYSTREAMS_SASL_PASSWORD_FILE",
        ),
        ({"CITYSTREAMS_SASL_USERNAME": "p"}, "CITYSTREAMS_SASL_USERNAME is set but"),
        ({"CITYSTREAMS_SASL_PASSWORD_FILE": "/x"}, "CITYSTREAMS_SASL_PASSWORD_FILE is set but"),
        ({"CITYSTREAMS_SSL_CAFILE": "/ca.pem"}, "CITYSTREAMS_SSL_CAFILE is set but"),
        (
            {"CITYSTREAMS_SECURITY_PROTOCOL": "SSL", "CITYSTREAMS_SSL_KEYFILE": "/k.pem"},
            "CITYSTREAMS_SSL_KEYFILE is set without CITYSTREAMS_SSL_CERTFILE",
        ),
    ],
)
def test_combinations_that_cannot_work_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


def test_no_secret_in_repr_or_settings_listing(password_file: Path) -> None:
    s = Settings.from_env(sasl_env(password_file))
    assert PASSWORD not in repr(s)
    assert PASSWORD not in str(dataclasses.asdict(s))
    assert PASSWORD not in describe(s)
    assert "as pipeline (SCRAM-SHA-512)" in describe(s)
    # `citystreams settings` lists every field; there is none for the password.
    listing = subprocess.run(
        [sys.executable, "-m", "streams", "settings"],
        env={"PYTHONPATH": str(ROOT), **s.to_env()},
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    assert "sasl_password_file" in listing.stdout
    assert PASSWORD not in listing.stdout + listing.stderr


# --- client options ---------------------------------------------------------------------


def test_sasl_plaintext_reads_the_password_file_and_hides_it(
    password_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s = Settings.from_env(
        {**sasl_env(password_file), "CITYSTREAMS_SECURITY_PROTOCOL": "SASL_PLAINTEXT"}
    )
    with caplog.at_level(logging.DEBUG):
        kwargs = client_kwargs(s)
        logging.getLogger("test").info("client options: %s", kwargs)
    assert kwargs["security_protocol"] == "SASL_PLAINTEXT"
    assert "ssl_context" not in kwargs
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kwargs["sasl_plain_username"] == "pipeline"
    password = kwargs["sasl_plain_password"]
    assert isinstance(password, Secret) and password == PASSWORD  # newline dropped
    assert PASSWORD not in repr(kwargs) and PASSWORD not in caplog.text


def test_the_password_is_read_at_connect_time(password_file: Path) -> None:
    s = Settings.from_env(sasl_env(password_file, CITYSTREAMS_SECURITY_PROTOCOL="SASL_PLAINTEXT"))
    password_file.write_text("rotated\n")
    assert client_kwargs(s)["sasl_plain_password"] == "rotated"


def test_a_missing_password_file_names_the_variable(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    s = Settings.from_env(sasl_env(missing, CITYSTREAMS_SECURITY_PROTOCOL="SASL_PLAINTEXT"))
    with pytest.raises(SecurityError, match=rf"CITYSTREAMS_SASL_PASSWORD_FILE: {missing} does"):
        client_kwargs(s)
    with pytest.raises(SettingsError):  # what the command line prints as one line
        faust_credentials(s)
    missing.write_text("\n")
    with pytest.raises(SecurityError, match="is empty"):
        client_kwargs(s)


def test_read_secret_never_shows_the_content(tmp_path: Path) -> None:
    path = tmp_path / "binary"
    path.write_bytes(b"\xff\xfe" + PASSWORD.encode())
    with pytest.raises(SecurityError) as info:
        read_secret(path, "CITYSTREAMS_X")
    assert "CITYSTREAMS_X" in str(info.value) and PASSWORD not in str(info.value)


@needs_openssl
def test_sasl_ssl_verifies_the_broker(certs: Path, password_file: Path) -> None:
    s = Settings.from_env(sasl_env(password_file, CITYSTREAMS_SSL_CAFILE=str(certs / "ca.pem")))
    kwargs = client_kwargs(s)
    context = kwargs["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
    assert any("citystreams test CA" in str(c["subject"]) for c in context.get_ca_certs())
    assert kwargs["security_protocol"] == "SASL_SSL"

    import faust

    credentials = faust_credentials(s)
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.protocol.value == "SASL_SSL"
    assert credentials.mechanism.value == "SCRAM-SHA-512"
    assert credentials.ssl_context is not None
    assert PASSWORD not in repr(credentials)


@needs_openssl
def test_tls_files_that_cannot_be_used_name_their_variable(
    certs: Path, tmp_path: Path, password_file: Path
) -> None:
    def settings(**env: str) -> Settings:
        return Settings.from_env({"CITYSTREAMS_SECURITY_PROTOCOL": "SSL", **env})

    missing = tmp_path / "missing.pem"
    with pytest.raises(SecurityError, match=f"CITYSTREAMS_SSL_CAFILE: {missing} does not exist"):
        client_kwargs(settings(CITYSTREAMS_SSL_CAFILE=str(missing)))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(SecurityError, match="CITYSTREAMS_SSL_CAFILE"):
        client_kwargs(settings(CITYSTREAMS_SSL_CAFILE=str(garbage)))
    with pytest.raises(SecurityError, match="CITYSTREAMS_SSL_CERTFILE"):
        client_kwargs(settings(CITYSTREAMS_SSL_CERTFILE=str(garbage)))


@needs_openssl
def test_client_certificates_and_encrypted_keys(certs: Path, tmp_path: Path) -> None:
    base = {
        "CITYSTREAMS_SECURITY_PROTOCOL": "SSL",
        "CITYSTREAMS_SSL_CAFILE": str(certs / "ca.pem"),
        "CITYSTREAMS_SSL_CERTFILE": str(certs / "server.crt"),
    }
    plain = Settings.from_env({**base, "CITYSTREAMS_SSL_KEYFILE": str(certs / "server.key")})
    assert isinstance(client_kwargs(plain)["ssl_context"], ssl.SSLContext)

    encrypt_key(tmp_path, str(certs / "server.key"), "encrypted.key", PASSWORD)
    encrypted = {**base, "CITYSTREAMS_SSL_KEYFILE": str(tmp_path / "encrypted.key")}
    # Without its password file: an error naming what to set, never a terminal prompt.
    with pytest.raises(SecurityError, match="CITYSTREAMS_SSL_KEY_PASSWORD_FILE"):
        client_kwargs(Settings.from_env(encrypted))
    key_password = tmp_path / "key-password"
    key_password.write_text(PASSWORD + "\n")
    s = Settings.from_env({**encrypted, "CITYSTREAMS_SSL_KEY_PASSWORD_FILE": str(key_password)})
    assert isinstance(client_kwargs(s)["ssl_context"], ssl.SSLContext)
    key_password.write_text("wrong\n")
    with pytest.raises(SecurityError, match="CITYSTREAMS_SSL_CERTFILE/CITYSTREAMS_SSL_KEYFILE"):
        client_kwargs(s)


@needs_openssl
def test_the_faust_app_gets_the_credentials(
    certs: Path, password_file: Path, tmp_path: Path
) -> None:
    from streams.runtime.app import create_app

    s = Settings.from_env(
        sasl_env(
            password_file,
            CITYSTREAMS_SSL_CAFILE=str(certs / "ca.pem"),
            CITYSTREAMS_STATE_DIR=str(tmp_path),
        )
    )
    import faust

    credentials = create_app(s).conf.broker_credentials
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.username == "pipeline"
    assert credentials.protocol.value == "SASL_SSL"


# --- ACLs ---------------------------------------------------------------------------------


def topics_of(acls: list[Acl], operation: Operation) -> set[str]:
    return {
        a.resource
        for a in acls
        if a.resource_type is ResourceType.TOPIC
        and a.operation is operation
        and a.pattern is PatternType.LITERAL
    }


def test_each_role_gets_only_its_topics() -> None:
    s = Settings.from_env({}, topic_prefix="dev.", app_id="cs")
    assert ingest_acls(s, "gw") == [
        Acl(
            "User:gw", ResourceType.TOPIC, "dev.telemetry.raw", PatternType.LITERAL, Operation.WRITE
        )
    ]
    assert [a.resource for a in registry_acls(s, "reg")] == ["dev.devices"]

    pipeline = pipeline_acls(s, "pipeline")
    assert {a.principal for a in pipeline} == {"User:pipeline"}
    assert topics_of(pipeline, Operation.READ) == {
        "dev.telemetry.raw",
        "dev.devices",
        "cs-__assignor-__leader",
    }
    outputs = set(CONTRACT_TOPICS) - {TELEMETRY_RAW, DEVICES} | {TELEMETRY_ENRICHED}
    assert topics_of(pipeline, Operation.WRITE) == {f"dev.{t}" for t in outputs}
    prefixed = {
        (a.resource, a.operation)
        for a in pipeline
        if a.resource_type is ResourceType.TOPIC and a.pattern is PatternType.PREFIXED
    }
    assert prefixed == {
        ("dev.cs.", op) for op in (Operation.READ, Operation.WRITE, Operation.CREATE)
    }
    # Every internal topic falls under that prefix, and no contract topic does.
    for base in INTERNAL:
        assert topic_name("dev.", base, "cs").startswith("dev.cs.")
    for base in CONTRACT_TOPICS:
        assert not topic_name("dev.", base, "cs").startswith("dev.cs.")
    group = [a for a in pipeline if a.resource_type is ResourceType.GROUP]
    assert [(a.resource, a.operation) for a in group] == [("cs", Operation.READ)]
    assert any(
        a.resource_type is ResourceType.TRANSACTIONAL_ID and a.pattern is PatternType.PREFIXED
        for a in pipeline
    )


def test_consumers_read_their_topics_and_group_only() -> None:
    s = Settings.from_env({})
    acls = consumer_acls(s, "dash", [METRICS_DISTRICT, ALERTS], "dash")
    assert {(a.resource, a.operation) for a in acls} == {
        ("metrics.district", Operation.READ),
        ("alerts", Operation.READ),
        ("dash", Operation.READ),
    }
    with pytest.raises(ValueError, match="internal"):
        consumer_acls(s, "dash", [STATE_DEVICE], None)


def test_deploy_document_is_current() -> None:
    doc = (ROOT / "deploy" / "kafka" / "ACLS.md").read_text(encoding="utf-8")
    acls = example_acls(Settings.from_env({}))
    assert acl_markdown(acls) in doc, "regenerate with `citystreams acls --markdown`"
    consumer = "dashboard:dashboard:metrics.district,alerts"
    assert acl_commands(acls) in doc, f"regenerate: `citystreams acls show --consumer {consumer}`"


def test_acl_commands_spell_kafka_acls_options() -> None:
    s = Settings.from_env({})
    text = acl_commands(pipeline_acls(s, "pipeline"))
    assert "--operation IdempotentWrite --cluster" in text
    assert "--topic 'citystreams.' --resource-pattern-type prefixed" in text
    assert "--transactional-id 'citystreams-' --resource-pattern-type prefixed" in text


# --- the local broker's secure mode ----------------------------------------------------------


def test_broker_security_needs_an_admin_and_plain_user_names(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("x\n")
    with pytest.raises(KafkaError, match="admin"):
        BrokerSecurity(tmp_path / "s.pem", tmp_path / "ca.pem", {"pipeline": tmp_path / "pw"})
    with pytest.raises(KafkaError, match="user names"):
        BrokerSecurity(
            tmp_path / "s.pem",
            tmp_path / "ca.pem",
            {"admin": tmp_path / "pw", "a,b": tmp_path / "pw"},
        )


def test_scram_users_are_formatted_without_their_passwords(tmp_path: Path) -> None:
    (tmp_path / "admin").write_text(PASSWORD + "\n")
    security = BrokerSecurity(
        tmp_path / "s.pem", tmp_path / "ca.pem", {"admin": tmp_path / "admin"}
    )
    (credential,) = security.scram_credentials()
    assert credential.startswith("SCRAM-SHA-512=[name=admin,iterations=8192,salt=")
    assert "saltedpassword=" in credential and PASSWORD not in credential
    props = security.properties(9092, 9093)
    assert props["listeners"] == "SASL_SSL://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093"
    assert props["super.users"] == "User:admin"  # not ANONYMOUS: the controller logs in
    assert props["allow.everyone.if.no.acl.found"] == "false"
