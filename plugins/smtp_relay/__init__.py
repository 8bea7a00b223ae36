"""The ``smtp`` transport: relay through a smarthost with aiosmtplib.

Configured under ``server.transport``::

    transport:
      type: smtp
      host: smtp.example.net
      port: 587
      tls: starttls
      username: scaisend
      password: {"$env": "SMTP_PASSWORD"}

How sessions are pooled and failures retried is told in :mod:`plugins.smtp_relay.relay`.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable, Mapping
from typing import Any

from core import Runtime, hookimpl
from core.config import ConfigError, ConfigProblem
from core.transports import TransportType
from plugins.smtp_relay.relay import RelaySettings, SmtpRelayTransport

__all__ = ["OPTIONS_SCHEMA", "RelaySettings", "SmtpRelayTransport", "settings_from_options"]

OPTIONS_PATH = "server.transport"

OPTIONS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["host"],
    "properties": {
        "host": {"type": "string", "minLength": 1, "description": "the smarthost's name"},
        "port": {
            "type": "integer",
            "minimum": 1,
            "maximum": 65535,
            "default": 587,
            "description": "587 for STARTTLS submission, 465 for implicit TLS",
        },
        "tls": {
            "enum": ["starttls", "opportunistic", "implicit", "none"],
            "default": "starttls",
            "description": "starttls: required, never send in clear; opportunistic: STARTTLS "
            "when offered; implicit: TLS from the first byte (port 465); none: clear text",
        },
        "username": {"type": "string", "minLength": 1, "description": "AUTH user"},
        "password": {
            "type": "string",
            "description": 'AUTH password; write {"$env": "NAME"} to keep it out of the file',
        },
        "verify_certificates": {
            "type": "boolean",
            "default": True,
            "description": "check the relay's certificate chain and name",
        },
        "ca_file": {
            "type": "string",
            "minLength": 1,
            "description": "PEM file of the authorities to trust instead of the system's",
        },
        "local_hostname": {
            "type": "string",
            "pattern": "^(\\[[A-Za-z0-9:.]+\\]|[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?)$",
            "description": "name sent in EHLO; default: this machine's fully qualified name",
        },
        "timeout_seconds": {
            "type": "number",
            "exclusiveMinimum": 0,
            "default": 30,
            "description": "for connecting and for each SMTP command",
        },
        "max_connections": {
            "type": "integer",
            "minimum": 1,
            "default": 4,
            "description": "at most this many sessions at once, shared by all sends",
        },
        "max_messages_per_connection": {
            "type": "integer",
            "minimum": 1,
            "default": 100,
            "description": "then the session is closed and a new one opened",
        },
        "retry_attempts": {
            "type": "integer",
            "minimum": 0,
            "default": 3,
            "description": "retries after the first try, on 4xx replies and connection "
            "failures; 5xx replies are never retried",
        },
        "retry_backoff_seconds": {
            "type": "number",
            "minimum": 0,
            "default": 1.0,
            "description": "wait before the first retry, doubled before each further one",
        },
    },
}


def _tls_context(options: Mapping[str, Any]) -> ssl.SSLContext:
    ca_file = options.get("ca_file")
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            [ConfigProblem(f"{OPTIONS_PATH}.ca_file", f"cannot load CA file: {exc}", ca_file)]
        ) from exc
    if not options.get("verify_certificates", True):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def settings_from_options(options: Mapping[str, Any]) -> RelaySettings:
    """Validated ``server.transport`` options (defaults filled) to :class:`RelaySettings`.

    Raises :class:`ConfigError` for what the schema cannot say: a user without a password
    (or the reverse), or a CA file that does not load.
    """
    username, password = options.get("username"), options.get("password")
    if (username is None) != (password is None):
        missing = "password" if password is None else "username"
        raise ConfigError(
            [
                ConfigProblem(
                    f"{OPTIONS_PATH}.{missing}",
                    "username and password go together: give both or neither",
                )
            ]
        )
    tls = options.get("tls", "starttls")
    return RelaySettings(
        host=options["host"],
        port=options.get("port", 587),
        tls=tls,
        username=username,
        password=password,
        tls_context=_tls_context(options) if tls != "none" else None,
        local_hostname=options.get("local_hostname"),
        timeout=float(options.get("timeout_seconds", 30)),
        max_connections=options.get("max_connections", 4),
        max_messages_per_connection=options.get("max_messages_per_connection", 100),
        retry_attempts=options.get("retry_attempts", 3),
        retry_backoff=float(options.get("retry_backoff_seconds", 1.0)),
    )


def _factory(options: Mapping[str, Any], runtime: Runtime) -> SmtpRelayTransport:
    return SmtpRelayTransport(settings_from_options(options))


@hookimpl
def register_transports() -> Iterable[TransportType]:
    return [
        TransportType(
            type="smtp",
            factory=_factory,
            options_schema=OPTIONS_SCHEMA,
            description="relay to a smarthost over SMTP (STARTTLS, AUTH, pooled sessions)",
        )
    ]
