"""Kafka security: TLS and SASL/SCRAM for every Kafka client, and the ACLs of each principal.

Every client of the package (the faust app, the admin client, producers, followers, the
state loader) takes its connection options from :func:`client_kwargs` (aiokafka) or
:func:`faust_credentials` (faust), so one set of ``CITYSTREAMS_*`` variables secures
them all. Secrets come from files named by the settings, read when a client is made:
they are never a field of :class:`~streams.settings.Settings` (whose repr, ``to_env``
and ``citystreams settings`` output are shown to people and subprocesses), and the
password travels as a :class:`Secret`, whose repr does not show it.

faust is imported only inside :func:`faust_credentials`: the command-line clients do
not need it, and importing it costs about half a second.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiokafka.helpers import create_ssl_context

from streams.settings import Settings, SettingsError

log = logging.getLogger(__name__)


class SecurityError(SettingsError):
    """A certificate, key or password file cannot be used; the message names the
    variable and the path (never the content)."""


class Secret(str):
    """A password. ``repr`` (what logging a dict of client options, a traceback's
    locals or a debugger shows) hides it; the value itself is an ordinary ``str`` for
    the client library."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "'<secret>'"


def read_secret(path: Path, variable: str) -> Secret:
    """The content of ``path`` without trailing line breaks (they are the editor's, not
    the password's). Errors name ``variable`` and ``path``, never the file's content."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SecurityError(f"{variable}: {path} does not exist") from None
    except UnicodeDecodeError:
        raise SecurityError(f"{variable}: {path} is not UTF-8 text") from None
    except OSError as exc:
        raise SecurityError(f"{variable}: cannot read {path} ({exc.strerror})") from None
    secret = text.rstrip("\r\n")
    if not secret:
        raise SecurityError(f"{variable}: {path} is empty")
    return Secret(secret)


def _readable(path: Path, variable: str) -> str:
    """``path`` as a string for the ssl module, after checking it can be opened, so a
    missing file is reported with its variable rather than as OpenSSL's errno."""
    try:
        with path.open("rb"):
            pass
    except FileNotFoundError:
        raise SecurityError(f"{variable}: {path} does not exist") from None
    except OSError as exc:
        raise SecurityError(f"{variable}: cannot read {path} ({exc.strerror})") from None
    return str(path)


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The client TLS context (``SSL``, ``SASL_SSL``), or None for the other protocols.

    Built by aiokafka's :func:`create_ssl_context`: certificate verification and host
    name checks are always on (a TLS connection to an unverified broker would hand it
    the SCRAM exchange and all data).
    """
    if not settings.security_protocol.endswith("SSL"):
        return None
    cafile = (
        _readable(settings.ssl_cafile, "CITYSTREAMS_SSL_CAFILE")
        if settings.ssl_cafile is not None
        else None
    )
    try:
        context: ssl.SSLContext = create_ssl_context(cafile=cafile)
    except ssl.SSLError as exc:
        raise SecurityError(
            f"CITYSTREAMS_SSL_CAFILE: {settings.ssl_cafile} holds no usable PEM CA "
            f"certificate ({exc.reason or exc})"
        ) from None
    if settings.ssl_certfile is not None:
        certfile = _readable(settings.ssl_certfile, "CITYSTREAMS_SSL_CERTFILE")
        keyfile = (
            _readable(settings.ssl_keyfile, "CITYSTREAMS_SSL_KEYFILE")
            if settings.ssl_keyfile is not None
            else None
        )
        key_password_file = settings.ssl_key_password_file
        password: Callable[[], str]
        if key_password_file is not None:
            key_password = read_secret(key_password_file, "CITYSTREAMS_SSL_KEY_PASSWORD_FILE")

            def password() -> str:
                return key_password
        else:
            # Without a callback OpenSSL would prompt on the terminal (and a worker
            # would hang): an encrypted key without its password file is an error.
            def password() -> str:
                raise SecurityError(
                    f"CITYSTREAMS_SSL_KEYFILE: the key in {settings.ssl_keyfile or certfile} "
                    "is encrypted: set CITYSTREAMS_SSL_KEY_PASSWORD_FILE"
                )

        try:
            context.load_cert_chain(certfile, keyfile, password)
        except ssl.SSLError as exc:
            raise SecurityError(
                f"CITYSTREAMS_SSL_CERTFILE/CITYSTREAMS_SSL_KEYFILE: cannot load the client "
                f"certificate {certfile} with key {keyfile or certfile} ({exc.reason or exc}; "
                "a wrong key password also shows as this)"
            ) from None
    return context


def client_kwargs(settings: Settings) -> dict[str, Any]:
    """The connection options of an aiokafka client (producer, consumer, admin).

    The password is read from ``CITYSTREAMS_SASL_PASSWORD_FILE`` on every call, so a
    rotated secret is picked up by the next client made; it is a :class:`Secret`.
    """
    kwargs: dict[str, Any] = {
        "bootstrap_servers": settings.broker,
        "security_protocol": settings.security_protocol,
    }
    context = ssl_context(settings)
    if context is not None:
        kwargs["ssl_context"] = context
    if settings.security_protocol.startswith("SASL_"):
        assert settings.sasl_password_file is not None  # Settings checks the combination
        kwargs["sasl_mechanism"] = settings.sasl_mechanism
        kwargs["sasl_plain_username"] = settings.sasl_username
        kwargs["sasl_plain_password"] = read_secret(
            settings.sasl_password_file, "CITYSTREAMS_SASL_PASSWORD_FILE"
        )
    return kwargs


def faust_credentials(settings: Settings) -> Any:
    """What ``faust.App(broker_credentials=...)`` takes: ``SASLCredentials`` (with the
    TLS context for ``SASL_SSL``), ``SSLCredentials``, or None for ``PLAINTEXT``.
    faust's aiokafka driver turns them into the same options as :func:`client_kwargs`
    for its consumer and producer."""
    import faust

    protocol = settings.security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = ssl_context(settings)
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    assert settings.sasl_password_file is not None  # Settings checks the combination
    return faust.SASLCredentials(
        username=settings.sasl_username,
        password=read_secret(settings.sasl_password_file, "CITYSTREAMS_SASL_PASSWORD_FILE"),
        ssl_context=context,  # None for SASL_PLAINTEXT, which faust reads as no TLS
        mechanism=settings.sasl_mechanism,
    )


def describe(settings: Settings) -> str:
    """One line for logs: how clients connect, without any secret."""
    parts = [f"{settings.broker} over {settings.security_protocol}"]
    if settings.security_protocol.startswith("SASL_"):
        parts.append(f"as {settings.sasl_username} ({settings.sasl_mechanism})")
    if settings.security_protocol.endswith("SSL"):
        parts.append(f"CA {settings.ssl_cafile or 'system'}")
        if settings.ssl_certfile is not None:
            parts.append(f"client certificate {settings.ssl_certfile}")
    return ", ".join(parts)
