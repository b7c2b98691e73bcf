"""A real Alertmanager (Debian's prometheus-alertmanager) on loopback ports of its own,
and the test's ear: a small HTTP server that records the webhook notifications
Alertmanager sends."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import free_port


@dataclass
class Receiver:
    """Webhook notifications as they arrive: (monotonic time, payload)."""

    port: int = 0
    calls: list[tuple[float, dict[str, Any]]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def alert_ids(self, since: float = 0.0, status: str = "firing") -> list[str]:
        """alert_id of every alert of ``status`` in notifications after ``since``."""
        return [
            a["labels"].get("alert_id", "")
            for t, payload in self.calls
            if t >= since
            for a in payload["alerts"]
            if a["status"] == status
        ]


@contextmanager
def receiver() -> Iterator[Receiver]:
    ear = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            ear.calls.append((time.monotonic(), json.loads(body)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ear.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield ear
    finally:
        server.shutdown()
        server.server_close()


def config(hook: str, *, repeat: str = "1h", send_resolved: bool = False) -> dict[str, Any]:
    """A test configuration: short group timings, one webhook receiver, and the shipped
    configuration's inhibition rules."""
    shipped = Path(__file__).resolve().parents[1] / "deploy" / "alertmanager" / "alertmanager.yml"
    inhibit = yaml.safe_load(shipped.read_text())["inhibit_rules"]
    return {
        "global": {"resolve_timeout": "5m"},
        "route": {
            "receiver": "hook",
            "group_by": ["alertname", "district"],
            "group_wait": "1s",
            "group_interval": "1s",
            "repeat_interval": repeat,
        },
        "inhibit_rules": inhibit,
        "receivers": [
            {"name": "hook", "webhook_configs": [{"url": hook, "send_resolved": send_resolved}]}
        ],
    }


class Alertmanager:
    """``prometheus-alertmanager`` with ``config``, on a free port; start() and stop()
    as often as a test likes (its data directory stays)."""

    def __init__(self, tmp: Path, conf: dict[str, Any], port: int | None = None) -> None:
        binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
        assert binary, "apt-get install prometheus-alertmanager (.ci/run does)"
        self.binary = binary
        self.dir = tmp / f"alertmanager-{free_port()}"
        self.dir.mkdir()
        (self.dir / "alertmanager.yml").write_text(yaml.safe_dump(conf))
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = open(self.dir / "alertmanager.log", "ab")  # noqa: SIM115 - closed with it
        self.proc = subprocess.Popen(
            [
                self.binary,
                f"--config.file={self.dir / 'alertmanager.yml'}",
                f"--storage.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address=",  # no gossip port: one instance per test
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"Alertmanager did not start: {self.log()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def log(self) -> str:
        return (self.dir / "alertmanager.log").read_text(errors="replace")

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=5) as response:
            return json.loads(response.read())

    def active(self) -> dict[str, dict[str, Any]]:
        """Active alerts (silenced ones included) by their alert_id label."""
        return {
            a["labels"].get("alert_id", ""): a
            for a in self.get("/api/v2/alerts?active=true&silenced=true&inhibited=true")
        }

    def amtool(self, *args: str) -> str:
        amtool = shutil.which("amtool")
        assert amtool, "apt-get install prometheus-alertmanager (.ci/run does)"
        result = subprocess.run(
            [amtool, f"--alertmanager.url={self.url}", *args],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout
