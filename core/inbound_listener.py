"""The inbound SMTP listener: bounces and complaints in, the ``handle_inbound_mail`` hook out.

It runs on the server's own event loop (aiosmtpd's protocol on ``loop.create_server``), so it
starts and stops with ``scaisend serve``; file and database work happens in worker threads.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import structlog
from aiosmtpd.smtp import SMTP, Envelope, Session

from core.inbound import UNATTRIBUTED_DIR, UNCLAIMED_DIR, InboundMessage, keep, prune
from core.runtime import Runtime

log = structlog.get_logger("scaisend.inbound")

HOOK = "handle_inbound_mail"
DEFAULT_MAX_MESSAGE_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_RECIPIENTS = 100
DEFAULT_MAX_SESSIONS = 50
DEFAULT_MAX_KEPT_BYTES = 1024 * 1024 * 1024
KEPT_DIRS = (UNCLAIMED_DIR, UNATTRIBUTED_DIR)
_CLOCK_TICK_NS = 20_000_000

ACCEPTED = "250 2.0.0 OK: report received"
TRY_LATER = "451 4.3.0 Local error in processing, try again later"
NOT_A_MESSAGE = "554 5.6.0 Message has no header section"
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
TOO_MANY_SESSIONS = b"421 4.7.0 Too many connections, try again later\r\n"

# A message starts with a header field: a name of printable characters other than ":".
_FIRST_FIELD = re.compile(rb"\A[\x21-\x39\x3b-\x7e]+[ \t]*:")


class ReportSession(SMTP):
    # Reports quote the returned message as it came, and mail servers do send lines longer
    # than RFC 5321's 1,000 octets: refusing those would answer a report with a permanent error.
    line_length_limit = 64 * 1024

    def __init__(self, *args: Any, on_close: Callable[[SMTP], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_close = on_close

    def connection_lost(self, error: Exception | None) -> None:
        try:
            super().connection_lost(error)
        finally:
            self._on_close(self)


class Refusal(asyncio.Protocol):
    """A connection over ``max_sessions``: told to come back later and closed unread."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(TOO_MANY_SESSIONS)
        transport.close()


@dataclass(frozen=True)
class ListenerSettings:
    """What the listener needs from ``server.smtp`` and ``server.bounce_domain``."""

    host: str
    port: int
    domains: frozenset[str]
    max_message_bytes: int
    max_recipients: int
    max_sessions: int = DEFAULT_MAX_SESSIONS
    max_kept_bytes: int = DEFAULT_MAX_KEPT_BYTES
    tls_cert: str | None = None
    tls_key: str | None = None

    @classmethod
    def of(cls, runtime: Runtime) -> ListenerSettings:
        config = runtime.config
        smtp: Mapping[str, Any] = config.smtp
        tls: Mapping[str, Any] = smtp.get("tls") or {}
        domains = {config.bounce_domain, *smtp.get("feedback_domains", ())}
        return cls(
            host=config.smtp_host,
            port=config.smtp_port,
            domains=frozenset(domain.lower().rstrip(".") for domain in domains),
            max_message_bytes=smtp.get("max_message_bytes", DEFAULT_MAX_MESSAGE_BYTES),
            max_recipients=smtp.get("max_recipients", DEFAULT_MAX_RECIPIENTS),
            max_sessions=smtp.get("max_sessions", DEFAULT_MAX_SESSIONS),
            max_kept_bytes=smtp.get("max_kept_bytes", DEFAULT_MAX_KEPT_BYTES),
            tls_cert=tls.get("cert_file"),
            tls_key=tls.get("key_file"),
        )

    def tls_context(self) -> ssl.SSLContext | None:
        if self.tls_cert is None or self.tls_key is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.tls_cert, self.tls_key)
        return context


def _domain(address: str) -> str | None:
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        return None
    return domain.lower().rstrip(".")


def _peer(peer: Any) -> str | None:
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return None if peer is None else str(peer)


class Pruner:
    """Keeps each folder of kept messages within ``max_bytes``, by removing the oldest."""

    def __init__(self, data_dir: Path, max_bytes: int) -> None:
        self.directories = [data_dir / directory for directory in KEPT_DIRS]
        self.max_bytes = max_bytes
        # A folder is only listed again once its modification time moved (a file came or went):
        # listing a full folder after every message would cost more than the message.
        self._listed_at: dict[Path, int] = {}

    def run(self) -> None:
        """Prune every folder that changed since it was last listed (blocking)."""
        started_at = time.time_ns()
        for directory in self.directories:
            try:
                changed_at = directory.stat().st_mtime_ns
            except FileNotFoundError:
                continue
            if self._listed_at.get(directory) == changed_at:
                continue
            removed = prune(directory, self.max_bytes)
            # Modification times come from a coarse clock: a file added in the same tick as the
            # one just listed would leave the time unchanged, so a recent time is not trusted.
            if started_at - changed_at > _CLOCK_TICK_NS:
                self._listed_at[directory] = changed_at
            if removed:
                log.info(
                    "inbound.pruned",
                    directory=str(directory),
                    removed=removed,
                    max_bytes=self.max_bytes,
                )


class Dispatcher:
    """Hands a received message to the plugins and decides the reply to ``DATA``."""

    def __init__(self, runtime: Runtime, max_kept_bytes: int) -> None:
        self.runtime = runtime
        self.pruner = Pruner(runtime.config.data_dir, max_kept_bytes)

    async def dispatch(self, message: InboundMessage) -> str:
        reply = await self._dispatch(message)
        if reply == ACCEPTED:
            try:
                await anyio.to_thread.run_sync(self.pruner.run)
            except OSError as exc:
                # The message is handled either way; a folder that cannot be pruned now is
                # tried again after the next message.
                log.error("inbound.prune_failed", error=repr(exc))
        return reply

    async def _dispatch(self, message: InboundMessage) -> str:
        if not _FIRST_FIELD.match(message.data):
            log.warning(
                "inbound.rejected",
                reason="no header section",
                peer=message.peer,
                mail_from=message.mail_from,
                size=len(message.data),
            )
            return NOT_A_MESSAGE
        host = self.runtime.plugins.host
        failed = []
        for impl in host.implementations(HOOK):
            ok, result = await host.call_async(HOOK, impl, message=message, runtime=self.runtime)
            if not ok:
                failed.append(impl.plugin_name)
            elif result is not None:
                log.info(
                    "inbound.claimed",
                    plugin=impl.plugin_name,
                    outcome=str(result),
                    **_envelope(message),
                )
                return ACCEPTED
        if failed:
            log.error("inbound.deferred", failed_plugins=failed, peer=message.peer)
            return TRY_LATER
        path = await anyio.to_thread.run_sync(
            keep, message, self.runtime.config.data_dir / UNCLAIMED_DIR
        )
        log.warning("inbound.unclaimed", path=str(path), **_envelope(message))
        return ACCEPTED


def _envelope(message: InboundMessage) -> dict[str, Any]:
    """What a log line says of a received message."""
    return {
        "peer": message.peer,
        "mail_from": message.mail_from,
        "rcpt_tos": list(message.rcpt_tos),
        "size": len(message.data),
    }


class SessionHandler:
    """aiosmtpd's handler: which recipients are accepted, what ``DATA`` answers."""

    def __init__(self, settings: ListenerSettings, dispatcher: Dispatcher) -> None:
        self.settings = settings
        self.dispatcher = dispatcher

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if _domain(address) not in self.settings.domains:
            log.info("inbound.recipient_refused", recipient=address, peer=_peer(session.peer))
            return "550 5.1.1 Recipient address rejected: not a bounce or feedback address"
        if len(envelope.rcpt_tos) >= self.settings.max_recipients:
            return TOO_MANY_RECIPIENTS
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        # aiosmtpd gives the null reverse-path of a bounce as "<>"; the hook sees it as "".
        mail_from = "" if envelope.mail_from in (None, "<>") else envelope.mail_from
        message = InboundMessage(
            mail_from=mail_from,
            rcpt_tos=tuple(envelope.rcpt_tos),
            data=bytes(envelope.original_content or b""),
            peer=_peer(session.peer),
        )
        try:
            return await self.dispatcher.dispatch(message)
        except Exception as exc:
            # Answered here rather than by aiosmtpd, so the transaction ends and the session
            # can go on with the next message.
            log.error("inbound.failed", error=repr(exc), peer=message.peer, exc_info=exc)
            return TRY_LATER

    async def handle_exception(self, error: Exception) -> str:
        log.error("inbound.session_failed", error=repr(error), exc_info=error)
        return TRY_LATER


class InboundListener:
    """The SMTP server of one process; :meth:`start` binds it, :meth:`aclose` stops it."""

    def __init__(self, runtime: Runtime, settings: ListenerSettings | None = None) -> None:
        self.settings = settings or ListenerSettings.of(runtime)
        self.handler = SessionHandler(
            self.settings, Dispatcher(runtime, self.settings.max_kept_bytes)
        )
        self._server: asyncio.Server | None = None
        self._tls: ssl.SSLContext | None = None
        self._hostname = "localhost"
        # Each holds a place from its connection until it is lost.
        self._sessions: set[SMTP] = set()

    @property
    def port(self) -> int:
        """The bound port (the configured one, or the one the system chose for port 0)."""
        assert self._server is not None, "the listener is not started"
        return int(self._server.sockets[0].getsockname()[1])

    def _protocol(self) -> asyncio.BaseProtocol:
        if len(self._sessions) >= self.settings.max_sessions:
            log.warning("inbound.session_refused", max_sessions=self.settings.max_sessions)
            return Refusal()
        session = ReportSession(
            self.handler,
            data_size_limit=self.settings.max_message_bytes,
            tls_context=self._tls,
            hostname=self._hostname,
            ident="ScaiSend inbound",
            on_close=self._sessions.discard,
        )
        self._sessions.add(session)
        return session

    async def start(self) -> None:
        self._tls = self.settings.tls_context()
        # aiosmtpd would otherwise look the name up for every connection, on the event loop.
        self._hostname = await anyio.to_thread.run_sync(socket.getfqdn)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._protocol, host=self.settings.host, port=self.settings.port
        )
        log.info(
            "inbound.listening",
            host=self.settings.host,
            port=self.port,
            domains=sorted(self.settings.domains),
            starttls=self._tls is not None,
        )

    async def aclose(self) -> None:
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        # Sessions still open would otherwise outlive the server (and its database).
        for session in list(self._sessions):
            if session.transport is not None:
                session.transport.close()
        await server.wait_closed()
        log.info("inbound.stopped")
