"""A throwaway certificate authority for the TLS tests, made with the openssl CLI (no
Python dependency: the package itself needs none for TLS)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")

_EC = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certificates(folder: Path) -> None:
    """In ``folder``: ``ca.pem`` (a CA for clients to trust), ``server.key`` and
    ``server.crt`` (a certificate for 127.0.0.1 and localhost signed by it), and
    ``server.pem`` (key, certificate and CA: the broker's PEM keystore)."""
    openssl(
        "req", "-x509", *_EC, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=citystreams test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=folder,
    )  # fmt: skip
    openssl(
        "req", *_EC, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost",
        cwd=folder,
    )  # fmt: skip
    (folder / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-out", "server.crt", "-extfile", "server.ext",
        cwd=folder,
    )  # fmt: skip
    (folder / "server.pem").write_bytes(
        b"".join((folder / name).read_bytes() for name in ("server.key", "server.crt", "ca.pem"))
    )


def encrypt_key(folder: Path, key: str, out: str, password: str) -> None:
    """``out``: ``key`` encrypted with ``password`` (AES-256, PKCS#8)."""
    (folder / "pass.tmp").write_text(password)
    try:
        openssl(
            "pkey", "-in", key, "-out", out, "-aes256", "-passout", "file:pass.tmp",
            cwd=folder,
        )  # fmt: skip
    finally:
        (folder / "pass.tmp").unlink()
