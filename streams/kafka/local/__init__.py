"""A real single-node Apache Kafka 4.x (KRaft, combined broker and controller) on loopback.

The jars come from Maven Central through the pinned ``pom.xml`` beside this module,
fetched once by Maven into the cache and reused offline afterwards. The broker's data
lives in the state directory, so topics and committed offsets survive a restart.

Errors a user can fix (no JDK, no Maven, a failed fetch, a port in use) are raised as
:class:`KafkaError` with one sentence saying what to do; the CLI prints it and exits 1.

With a :class:`BrokerSecurity` the client listener is SASL_SSL instead of PLAINTEXT:
TLS with the given PEM keystore, SCRAM-SHA-512 users created when the storage is
formatted, and Kafka's StandardAuthorizer, which refuses everything no ACL allows
(streams/kafka/acls.py says which ACLs each principal needs and creates them).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from streams.settings import Settings

log = logging.getLogger(__name__)

POM = "pom.xml"
KAFKA_VERSION = re.search(  # the pom is the single place that pins the version
    r"<kafka\.version>([^<]+)</kafka\.version>",
    resources.files(__package__).joinpath(POM).read_text(encoding="utf-8"),
).group(1)  # type: ignore[union-attr]
MIN_JAVA = 17
_READY_MARKER = ".complete"


class KafkaError(RuntimeError):
    """A problem the user can act on; ``str()`` is one actionable sentence."""


SCRAM_MECHANISM = "SCRAM-SHA-512"
# Kafka's default for new SCRAM credentials; each client login costs this many HMACs.
SCRAM_ITERATIONS = 8192
_USER_NAME = re.compile(r"[A-Za-z0-9._-]+")  # no ',', '=', ']' or quotes: the storage
# tool's --add-scram syntax and the JAAS line below have no escaping


@dataclass(frozen=True, slots=True)
class BrokerSecurity:
    """A secured local broker: a SASL_SSL client listener, SCRAM users and ACLs.

    ``keystore``: PEM with the broker's private key (PKCS#8, unencrypted) followed by
    its certificate chain; clients verify the host name, so the certificate must name
    ``127.0.0.1`` (an IP subject alternative name). ``truststore``: PEM CA
    certificates the broker trusts as a client of its own listener (inter-broker
    connections, e.g. transaction markers). ``users``: SCRAM-SHA-512 user name -> file
    holding its password; they are created when the storage is formatted, so a broker
    formatted before keeps the users it had. ``admin`` is one of them: the super user
    (no ACL applies to it) and the broker's own identity on its listeners.

    The KRaft controller listener stays unencrypted on loopback, but not anonymous:
    the authorizer checks it too, and a PLAINTEXT controller listener would need
    User:ANONYMOUS as a super user (the broker registers as it), which would let any
    local process administer the broker through the controller port (CreateAcls and
    user changes are served there). It is SASL_PLAINTEXT with the PLAIN mechanism and
    one static user, the admin (SCRAM cannot log in there: its credentials live in the
    metadata the controller serves).
    """

    keystore: Path
    truststore: Path
    users: Mapping[str, Path]
    admin: str = "admin"

    def __post_init__(self) -> None:
        bad = [name for name in self.users if not _USER_NAME.fullmatch(name)]
        if bad:
            raise KafkaError(
                f"SCRAM user names may use letters, digits, '.', '_' and '-' only: {bad}"
            )
        if self.admin not in self.users:
            raise KafkaError(
                f"the admin user {self.admin!r} needs a password file (users/{self.admin} "
                "of a `--secure` directory)"
            )

    @classmethod
    def from_dir(cls, folder: Path, admin: str = "admin") -> BrokerSecurity:
        """``folder/server.pem`` (key and chain), ``folder/ca.pem`` and one password
        file per user, ``folder/users/<name>``: the layout `citystreams kafka start
        --secure DIR` reads."""
        users = folder / "users"
        found = (
            {p.name: p for p in sorted(users.iterdir()) if p.is_file()} if users.is_dir() else {}
        )
        for path in (folder / "server.pem", folder / "ca.pem"):
            if not path.is_file():
                raise KafkaError(f"the secure broker needs {path} (see BrokerSecurity)")
        return cls(folder / "server.pem", folder / "ca.pem", found, admin)

    def password(self, user: str) -> str:
        path = self.users[user]
        try:
            password = path.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise KafkaError(
                f"cannot read the password of SCRAM user {user} from {path}: {exc}"
            ) from None
        if not password:
            raise KafkaError(f"the password file of SCRAM user {user} is empty: {path}")
        return password

    def scram_credentials(self) -> list[str]:
        """``--add-scram`` values for the storage tool, one per user: salted, so that
        no password appears on a command line (visible to every local user in ps)."""
        out = []
        for user in self.users:
            salt = secrets.token_bytes(32)
            # SCRAM's Hi() is PBKDF2 with one block of the hash's size (RFC 5802).
            salted = hashlib.pbkdf2_hmac(
                "sha512", self.password(user).encode(), salt, SCRAM_ITERATIONS
            )
            out.append(
                f"{SCRAM_MECHANISM}=[name={user},iterations={SCRAM_ITERATIONS},"
                f'salt="{base64.b64encode(salt).decode()}",'
                f'saltedpassword="{base64.b64encode(salted).decode()}"]'
            )
        return out

    def properties(self, port: int, controller_port: int) -> dict[str, str]:
        """The server.properties entries of the secure listeners."""
        admin, password = self.admin, self.password(self.admin)
        if '"' in password or "\\" in password:
            raise KafkaError("the admin password may not contain '\"' or '\\' (JAAS quoting)")
        scram_jaas = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{admin}" password="{password}";'
        )
        # Both sides of the controller connection: the admin logs in, and is the one
        # user the controller knows.
        plain_jaas = (
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'username="{admin}" password="{password}" user_{admin}="{password}";'
        )
        return {
            "listeners": (f"SASL_SSL://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}"),
            "advertised.listeners": f"SASL_SSL://127.0.0.1:{port}",
            "listener.security.protocol.map": "SASL_SSL:SASL_SSL,CONTROLLER:SASL_PLAINTEXT",
            "inter.broker.listener.name": "SASL_SSL",
            "sasl.enabled.mechanisms": SCRAM_MECHANISM,
            "sasl.mechanism.inter.broker.protocol": SCRAM_MECHANISM,
            # The server side of SCRAM (users from the metadata log) and the broker's
            # own client identity for inter-broker connections.
            f"listener.name.sasl_ssl.{SCRAM_MECHANISM.lower()}.sasl.jaas.config": scram_jaas,
            "sasl.mechanism.controller.protocol": "PLAIN",
            "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
            "listener.name.controller.plain.sasl.jaas.config": plain_jaas,
            # Kafka 4 reads PEM directly: no keytool, no JKS passwords.
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(self.keystore),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.truststore),
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "super.users": f"User:{admin}",
            "allow.everyone.if.no.acl.found": "false",
        }


@dataclass(frozen=True, slots=True)
class KafkaStatus:
    running: bool
    pid: int | None
    bootstrap: str


class LocalKafka:
    """Start, stop and inspect the project's own broker.

    ``port`` defaults to the port of ``settings.broker`` so that, with no variable set,
    the broker and the workers agree. ``properties`` are merged last into the
    generated ``server.properties`` (extra listeners for tests, for example).
    """

    def __init__(
        self,
        settings: Settings,
        port: int | None = None,
        properties: Mapping[str, str] | None = None,
        security: BrokerSecurity | None = None,
    ) -> None:
        self.settings = settings
        self.properties = dict(properties or {})
        self.security = security
        self.port = port if port is not None else settings.broker_port
        self.controller_port = settings.kafka_controller_port or self.port + 1
        self.home = settings.kafka_dir
        self.lib = settings.kafka_cache / KAFKA_VERSION / "lib"

    # --- paths ----------------------------------------------------------------------
    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def pid_file(self) -> Path:
        return self.home / "kafka.pid"

    @property
    def log_file(self) -> Path:
        return self.home / "kafka.log"

    @property
    def properties_file(self) -> Path:
        return self.home / "server.properties"

    # --- fetch ------------------------------------------------------------------------
    def java(self) -> str:
        """The java executable, checked to be 17 or newer."""
        java = shutil.which(self.settings.java)
        if java is None:
            raise KafkaError(
                f"Kafka needs Java {MIN_JAVA}+ but `{self.settings.java}` is not on PATH: "
                "install a JDK (e.g. `apt-get install openjdk-17-jre-headless`) or set "
                "CITYSTREAMS_JAVA to the java executable."
            )
        out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False).stderr
        match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
        if match is None:
            raise KafkaError(f"Could not read the Java version from `{java} -version`: {out!r}.")
        major = int(match.group(1))
        if major == 1 and match.group(2):  # "1.8" style
            major = int(match.group(2))
        if major < MIN_JAVA:
            raise KafkaError(
                f"Kafka {KAFKA_VERSION} needs Java {MIN_JAVA}+ but `{java}` is Java {major}: "
                "install a newer JDK or point CITYSTREAMS_JAVA at one."
            )
        return java

    def is_fetched(self) -> bool:
        return (self.lib / _READY_MARKER).exists()

    def fetch(self, progress: Callable[[str], None] | None = None) -> Path:
        """Resolve the pinned jars into the cache once; later calls do nothing.
        ``progress`` gets a line every few seconds while Maven downloads."""
        if self.is_fetched():
            return self.lib
        mvn = shutil.which("mvn")
        if mvn is None:
            raise KafkaError(
                "Fetching Kafka's jars needs Maven but `mvn` is not on PATH: install it "
                "(e.g. `apt-get install maven`) and run `citystreams kafka fetch` again."
            )
        tmp = self.lib.with_name("lib.partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        log.info("fetching Apache Kafka %s from Maven Central into %s", KAFKA_VERSION, self.lib)
        with resources.as_file(resources.files(__package__).joinpath(POM)) as pom:
            proc = subprocess.Popen(
                [
                    mvn,
                    "-B",
                    "-q",
                    "-f",
                    str(pom),
                    "dependency:copy-dependencies",
                    "-DincludeScope=runtime",
                    f"-DoutputDirectory={tmp}",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            # Progress for a first start (~80 MB): what Maven has downloaded so far.
            repo = Path.home() / ".m2" / "repository"
            before = _size(repo)
            while True:
                try:
                    output, _ = proc.communicate(timeout=3)
                    break
                except subprocess.TimeoutExpired:
                    if progress is not None:
                        got = (_size(repo) - before) / 1e6
                        progress(f"  fetching Kafka {KAFKA_VERSION}: {got:.0f} MB downloaded")
        proc_output = output or ""
        if proc.returncode != 0:
            tail = proc_output.strip().splitlines()[-5:]
            raise KafkaError(
                f"Fetching Kafka {KAFKA_VERSION} from Maven Central failed (mvn exit "
                f"{proc.returncode}): check network access to Maven Central and run "
                f"`citystreams kafka fetch` again. Maven said: {' | '.join(tail)}"
            )
        (tmp / _READY_MARKER).write_text(KAFKA_VERSION + "\n")
        shutil.rmtree(self.lib, ignore_errors=True)
        tmp.rename(self.lib)
        return self.lib

    # --- configuration -------------------------------------------------------------
    def _write_config(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": (
                f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}"
            ),
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self.data_dir),
            # One node: every internal topic has one replica.
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "6",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "num.partitions": str(self.settings.partitions),
            # Tests and the demo start consumers right away; the 3 s default only delays them.
            "group.initial.rebalance.delay.ms": "0",
            # A producer that writes before `topics create` would otherwise create the
            # topic with the broker's defaults (partitions, no compaction) unnoticed.
            "auto.create.topics.enable": "false",
            "log.retention.hours": "168",
            "log.segment.bytes": str(64 * 1024 * 1024),
            # A worker is allowed to crash: its session ends after at most this long.
            "group.min.session.timeout.ms": "1000",
            "message.max.bytes": str(1024 * 1024 + 1024),
        }
        if self.security is not None:
            props.update(self.security.properties(self.port, self.controller_port))
            # It holds the admin's password (the broker's inter-broker login).
            self.properties_file.touch(mode=0o600)
            self.properties_file.chmod(0o600)
        props.update(self.properties)
        self.properties_file.write_text(
            "".join(f"{k}={v}\n" for k, v in props.items()), encoding="utf-8"
        )
        (self.home / "log4j2.properties").write_text(_LOG4J2.format(log=self.log_file))

    def _classpath(self) -> str:
        return str(self.lib / "*")

    def _jvm(self, java: str) -> list[str]:
        return [
            java,
            f"-Xmx{self.settings.kafka_heap}",
            "-Xms128m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.home / 'log4j2.properties'}",
            "-cp",
            self._classpath(),
        ]

    def _format(self, java: str) -> None:
        users_file = self.home / "scram-users"  # who was created at format time
        if (self.data_dir / "meta.properties").exists():
            if self.security is not None:
                had = users_file.read_text().split() if users_file.exists() else []
                missing = sorted(set(self.security.users) - set(had))
                if missing:
                    # SCRAM users are added by the storage tool only; this broker keeps
                    # what it had, so these logins will be refused.
                    log.warning(
                        "SCRAM users %s do not exist: the storage in %s was formatted "
                        "without them (remove it to format afresh)",
                        ", ".join(missing),
                        self.data_dir,
                    )
            return
        cluster_id = "-"
        while cluster_id.startswith("-"):  # as Kafka's Uuid.randomUuid: a leading "-"
            # would be read as an option by the storage tool (1 start in 64 failed)
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        scram: list[str] = []
        if self.security is not None:
            for credential in self.security.scram_credentials():
                scram += ["--add-scram", credential]
        proc = subprocess.run(
            [
                *self._jvm(java),
                "kafka.tools.StorageTool",
                "format",
                "-t",
                cluster_id,
                "-c",
                str(self.properties_file),
                *scram,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise KafkaError(
                f"Formatting Kafka's storage in {self.data_dir} failed: "
                f"{(proc.stdout + proc.stderr).strip()[-400:]}"
            )
        users_file.write_text(
            "".join(f"{u}\n" for u in self.security.users) if self.security else ""
        )

    # --- lifecycle -------------------------------------------------------------------
    def _read_pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _is_our_kafka(pid, self.properties_file) else None

    def status(self) -> KafkaStatus:
        pid = self._read_pid()
        running = pid is not None and _port_open("127.0.0.1", self.port)
        return KafkaStatus(running=running, pid=pid, bootstrap=self.bootstrap)

    def start(
        self, timeout: float = 90.0, progress: Callable[[str], None] | None = None
    ) -> KafkaStatus:
        """Start the broker (fetching it first if needed) and wait until it answers."""
        java = self.java()
        current = self.status()
        if current.pid is not None:
            self.wait_ready(timeout)
            return self.status()
        if _port_open("127.0.0.1", self.port):
            raise KafkaError(
                f"Port {self.port} is already in use by another program: stop it or choose "
                "another port with CITYSTREAMS_BROKER=127.0.0.1:PORT."
            )
        self.fetch(progress)
        self._write_config()
        self._format(java)
        with open(self.log_file, "ab") as out:
            proc = subprocess.Popen(
                [*self._jvm(java), "kafka.Kafka", str(self.properties_file)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # outlives the command that started it
                cwd=self.home,
            )
        self.pid_file.write_text(f"{proc.pid}\n")
        try:
            self.wait_ready(timeout, proc=proc)
        except KafkaError:
            self.stop()
            raise
        return self.status()

    def wait_ready(self, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
        """Wait until the broker serves metadata that lists itself."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise KafkaError(
                    f"Kafka exited with code {proc.returncode} while starting: see {self.log_file}."
                )
            if _broker_answers("127.0.0.1", self.port, self._probe_tls()):
                return
            time.sleep(0.2)
        raise KafkaError(
            f"Kafka did not answer on {self.bootstrap} within {timeout:.0f} s: see {self.log_file}."
        )

    def _probe_tls(self) -> ssl.SSLContext | None:
        """TLS for the readiness probe of a secure broker. It checks the chain against
        the truststore but not the host name: it only asks whether this broker is up,
        and clients do verify host names."""
        if self.security is None:
            return None
        context = ssl.create_default_context(cafile=str(self.security.truststore))
        context.check_hostname = False
        return context

    def stop(self, timeout: float = 30.0) -> bool:
        """Shut the broker down cleanly (SIGTERM, then SIGKILL after ``timeout``)."""
        pid = self._read_pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)
        if _alive(pid):
            log.warning("Kafka (pid %d) ignored SIGTERM for %.0f s; killing it", pid, timeout)
            os.kill(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.05)
        self.pid_file.unlink(missing_ok=True)
        return True


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie has exited; its parent just has not reaped it


def _is_our_kafka(pid: int, properties: Path) -> bool:
    """The pid file may be stale: only a live JVM running our properties file counts."""
    if not _alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"kafka.Kafka" in cmdline and str(properties).encode() in cmdline


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _broker_answers(host: str, port: int, tls: ssl.SSLContext | None = None) -> bool:
    """Send a Kafka ApiVersions v0 request and check for a well-formed error-free reply.

    A raw request keeps ``start`` free of asyncio and of client-library retries; the
    listener only accepts once the broker has finished starting. A SASL listener
    answers ApiVersions before the login (clients ask it first), so the probe needs
    TLS (``tls``) but no credentials.
    """
    client_id = b"citystreams"
    body = (
        (18).to_bytes(2, "big")  # api key: ApiVersions
        + (0).to_bytes(2, "big")  # version 0
        + (1).to_bytes(4, "big")  # correlation id
        + len(client_id).to_bytes(2, "big")
        + client_id
    )
    try:
        with contextlib.ExitStack() as stack:
            sock = stack.enter_context(socket.create_connection((host, port), timeout=2.0))
            if tls is not None:
                sock = stack.enter_context(tls.wrap_socket(sock, server_hostname=host))
            sock.sendall(len(body).to_bytes(4, "big") + body)
            header = _recv_exact(sock, 4)
            size = int.from_bytes(header, "big")
            reply = _recv_exact(sock, size)
    except OSError:  # ssl.SSLError is one too
        return False
    return len(reply) >= 6 and reply[:4] == (1).to_bytes(4, "big") and reply[4:6] == b"\0\0"


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise OSError("connection closed")
        buf += chunk
    return bytes(buf)


_LOG4J2 = """\
# Kafka's log, written by `citystreams kafka start`.
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.file.ref = file
logger.server.name = kafka.server.KafkaRaftServer
logger.server.level = INFO
logger.broker.name = kafka.server.BrokerServer
logger.broker.level = INFO
"""


def _size(folder: Path) -> int:
    """Bytes under ``folder`` (0 if it does not exist)."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):  # a file Maven is still writing
                total += os.path.getsize(os.path.join(root, name))
    return total
