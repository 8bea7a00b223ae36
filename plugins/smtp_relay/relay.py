"""Relaying finished messages to one smarthost over SMTP.

A small pool of open, greeted and authenticated sessions is shared by every ``deliver`` call,
so a large send pays the connection, TLS and AUTH round trips once per session rather than
once per message. A semaphore bounds how many sessions are in use at once: the smarthost sees
at most ``max_connections`` of ours, however many sends run side by side.

Retries happen in rounds over a batch: every undelivered message is tried once per round,
and the batch sleeps (exponentially longer each time) between rounds. Messages refused with a
5xx are settled at once; 4xx replies and connection trouble keep a message for the next round
until the rounds run out. When a session cannot be opened, the rest of that round stops
trying to open new ones (an unreachable relay costs one timeout per round, not one per
message), yet keeps using the sessions still alive.

aiosmtplib runs on asyncio, so this transport needs anyio's asyncio backend (the server's).
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import aiosmtplib
import anyio
import structlog

from core.transports import DeliveryResult, Outcome, OutgoingMessage

log = structlog.get_logger("scaisend.smtp")

TlsMode = Literal["starttls", "opportunistic", "implicit", "none"]


@dataclass(frozen=True)
class RelaySettings:
    """Where and how to relay; built from ``server.transport`` by the plugin."""

    host: str
    port: int = 587
    tls: TlsMode = "starttls"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls_context: ssl.SSLContext | None = field(default=None, repr=False)
    """Used for STARTTLS and implicit TLS; ``None`` means Python's verifying default."""
    local_hostname: str | None = None
    """Sent in EHLO; ``None`` means this machine's fully qualified name."""
    timeout: float = 30.0
    max_connections: int = 4
    max_messages_per_connection: int = 100
    retry_attempts: int = 3
    """Rounds after the first: a message is tried at most ``retry_attempts + 1`` times."""
    retry_backoff: float = 1.0
    """Seconds before the first retry round; doubled before each further one."""

    @property
    def relay(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class _Failure:
    """Why one attempt did not deliver. A ``permanent`` failure is never retried."""

    permanent: bool
    detail: str
    code: int | None = None


class _SetupError(Exception):
    """A session could not be opened (connect, EHLO, STARTTLS or AUTH)."""

    def __init__(self, failure: _Failure, stage: str) -> None:
        super().__init__(failure.detail)
        self.failure = failure
        self.stage = stage


class _StaleSession(Exception):
    """A pooled session turned out to be closed before the server accepted anything."""


@dataclass(eq=False)
class _Session:
    smtp: aiosmtplib.SMTP
    transactions: int = 0


@dataclass
class _Round:
    """One pass over a batch's undelivered messages."""

    setup_failure: _Failure | None = None
    """Set once opening a session failed in this round: the rest of the round opens none."""


def _is_permanent(code: int) -> bool:
    return 500 <= code <= 599


def _message_size(data: bytes) -> int:
    """The RFC 1870 SIZE: octets with CRLF line ends, before dot-stuffing."""
    return len(data) if data.endswith(b"\r\n") else len(data) + 2


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, aiosmtplib.SMTPException) else f"{type(exc).__name__}: {text}"


class SmtpRelayTransport:
    """The ``smtp`` transport: see the module docstring for how sessions and retries work.

    Belongs to one event loop (the one its first ``deliver`` runs on), like the runtime that
    builds it.
    """

    name = "smtp"

    def __init__(self, settings: RelaySettings) -> None:
        self.settings = settings
        self._slots = anyio.Semaphore(settings.max_connections)
        self._idle: list[_Session] = []
        self._open = 0
        self._changed = anyio.Event()
        self._closed = False
        self._local_hostname = settings.local_hostname

    def __repr__(self) -> str:
        return f"SmtpRelayTransport({self.settings!r})"

    # Delivery

    async def deliver(self, messages: Sequence[OutgoingMessage]) -> list[DeliveryResult]:
        results: list[DeliveryResult | None] = [None] * len(messages)
        attempts = [0] * len(messages)
        last: dict[int, _Failure] = {}
        pending = list(range(len(messages)))
        for round_number in range(self.settings.retry_attempts + 1):
            if round_number:
                delay = self.settings.retry_backoff * 2 ** (round_number - 1)
                log.info(
                    "smtp.retrying", relay=self.settings.relay, messages=len(pending), delay=delay
                )
                await anyio.sleep(delay)
            current = _Round()

            async def attempt(index: int, current: _Round = current) -> None:
                attempts[index] += 1
                message = messages[index]
                outcome = await self._attempt(message, current)
                if isinstance(outcome, _Failure):
                    last[index] = outcome
                    if outcome.permanent:
                        results[index] = self._result(
                            "failed", message, outcome.code, outcome.detail, attempts[index]
                        )
                else:
                    results[index] = self._result(
                        "delivered", message, outcome.code, outcome.message, attempts[index]
                    )

            async with anyio.create_task_group() as group:
                for index in pending:
                    group.start_soon(attempt, index)
            pending = [index for index in pending if results[index] is None]
            if not pending:
                break
        for index in pending:
            failure = last[index]
            results[index] = self._result(
                "deferred", messages[index], failure.code, failure.detail, attempts[index]
            )
        return [result for result in results if result is not None]

    def _result(
        self,
        outcome: Outcome,
        message: OutgoingMessage,
        code: int | None,
        detail: str,
        attempts: int,
    ) -> DeliveryResult:
        """The result of a copy, logged as ``smtp.<outcome>`` (a warning unless delivered)."""
        emit = log.info if outcome == "delivered" else log.warning
        emit(
            f"smtp.{outcome}",
            relay=self.settings.relay,
            tenant=message.tenant,
            message_id=message.message_id,
            recipient=message.recipient,
            smtp_code=code,
            response=detail,
            attempts=attempts,
        )
        return DeliveryResult(outcome, detail, code, attempts)

    async def _attempt(
        self, message: OutgoingMessage, current: _Round
    ) -> aiosmtplib.SMTPResponse | _Failure:
        """One try of one message, holding a slot (and so at most one session) throughout."""
        async with self._slots:
            while True:
                session = await self._checkout(current)
                if isinstance(session, _Failure):
                    return session
                try:
                    outcome, reusable = await self._transact(session, message)
                except _StaleSession:
                    # Closed by the server while idle: not this message's attempt; open anew.
                    self._discard(session)
                    continue
                except BaseException:
                    self._discard(session)
                    raise
                if reusable:
                    await self._checkin(session)
                else:
                    self._discard(session)
                return outcome

    async def _transact(
        self, session: _Session, message: OutgoingMessage
    ) -> tuple[aiosmtplib.SMTPResponse | _Failure, bool]:
        """MAIL, RCPT and DATA for one message; the outcome and whether the session is reusable.

        Calls the commands one by one rather than ``sendmail`` so a failed transaction is
        followed by an RSET we can see succeed; a session whose RSET fails is not reused.
        """
        smtp = session.smtp
        reused = session.transactions > 0
        session.transactions += 1
        utf8 = not (message.mail_from.isascii() and message.rcpt_to.isascii())
        if utf8 and not smtp.supports_extension("smtputf8"):
            detail = f"the relay {self.settings.relay} does not offer SMTPUTF8, which a "
            detail += "non-ASCII address needs"
            return _Failure(True, detail), True
        options = ["SMTPUTF8"] if utf8 else []
        if smtp.supports_extension("size"):
            options.append(f"SIZE={_message_size(message.data)}")
        if smtp.supports_extension("8bitmime") and not message.data.isascii():
            options.append("BODY=8BITMIME")
        encoding = "utf-8" if utf8 else "ascii"
        started = False
        try:
            await smtp.mail(message.mail_from, options=options, encoding=encoding)
            started = True
            await smtp.rcpt(message.rcpt_to, encoding=encoding)
            reply = await smtp.data(message.data)
        except aiosmtplib.SMTPServerDisconnected as exc:
            if reused and not started:
                raise _StaleSession from exc
            return _Failure(False, _describe(exc)), False
        except aiosmtplib.SMTPResponseException as exc:
            failure = _Failure(_is_permanent(exc.code), exc.message, exc.code)
            if not 400 <= exc.code <= 599:
                # A malformed or out-of-sequence reply: the dialogue is out of step.
                return failure, False
            return failure, await self._reset(smtp) if started else smtp.is_connected
        except ValueError as exc:
            # An address aiosmtplib refuses to put on a command line (never sent).
            return _Failure(True, str(exc)), await self._reset(smtp) if started else True
        except (aiosmtplib.SMTPException, OSError) as exc:
            return _Failure(False, _describe(exc)), False
        return reply, True

    @staticmethod
    async def _reset(smtp: aiosmtplib.SMTP) -> bool:
        """RSET after a failed transaction; whether the session is fit for the next one."""
        if not smtp.is_connected:
            return False
        try:
            await smtp.rset()
        except (aiosmtplib.SMTPException, OSError):
            return False
        return True

    # The session pool

    def _notify(self) -> None:
        """Wake tasks waiting for a session to come back or for the pool to empty."""
        self._changed.set()
        self._changed = anyio.Event()

    async def _checkout(self, current: _Round) -> _Session | _Failure:
        """An idle session, else a new one, else (if opening failed) one another task frees."""
        while True:
            changed = self._changed
            while self._idle:
                session = self._idle.pop()
                if session.smtp.is_connected:
                    return session
                self._discard(session)
            if current.setup_failure is None:
                try:
                    return await self._connect()
                except _SetupError as exc:
                    current.setup_failure = exc.failure
                    log.warning(
                        "smtp.session_failed",
                        relay=self.settings.relay,
                        stage=exc.stage,
                        smtp_code=exc.failure.code,
                        response=exc.failure.detail,
                        open_sessions=self._open,
                    )
                    continue
            if self._open == 0:
                return current.setup_failure
            await changed.wait()

    async def _checkin(self, session: _Session) -> None:
        if (
            self._closed
            or session.transactions >= self.settings.max_messages_per_connection
            or not session.smtp.is_connected
        ):
            await self._retire(session)
        else:
            self._idle.append(session)
            self._notify()

    def _discard(self, session: _Session) -> None:
        """Drop a session at once (it errored, or its state is unknown)."""
        session.smtp.close()
        self._open -= 1
        self._notify()

    async def _retire(self, session: _Session) -> None:
        """Close a healthy session politely with QUIT."""
        try:
            if session.smtp.is_connected:
                await session.smtp.quit()
        except (aiosmtplib.SMTPException, OSError):
            pass
        finally:
            self._discard(session)

    async def _connect(self) -> _Session:
        """Open, greet, secure and authenticate a session, or raise :class:`_SetupError`."""
        settings = self.settings
        smtp = aiosmtplib.SMTP(
            hostname=settings.host,
            port=settings.port,
            local_hostname=await self._ehlo_name(),
            timeout=settings.timeout,
            use_tls=settings.tls == "implicit",
            start_tls=False,
            tls_context=settings.tls_context if settings.tls != "none" else None,
        )
        stage = "connect"
        try:
            await smtp.connect()
            stage = "EHLO"
            await self._greet(smtp)
            if settings.tls in ("starttls", "opportunistic"):
                if smtp.supports_extension("starttls"):
                    stage = "STARTTLS"
                    await smtp.starttls()
                    stage = "EHLO"
                    await self._greet(smtp)
                elif settings.tls == "starttls":
                    detail = f"the relay {settings.relay} does not offer STARTTLS, which "
                    detail += "tls: starttls requires; nothing was sent"
                    raise _SetupError(_Failure(False, detail), stage)
            if settings.username is not None:
                stage = "AUTH"
                await smtp.login(settings.username, settings.password or "")
        except _SetupError:
            smtp.close()
            raise
        except aiosmtplib.SMTPResponseException as exc:
            smtp.close()
            # Refused credentials are final; a refused greeting or STARTTLS is the relay's
            # trouble, not the message's, and may pass.
            permanent = stage == "AUTH" and _is_permanent(exc.code)
            raise _SetupError(_Failure(permanent, exc.message, exc.code), stage) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            smtp.close()
            detail = f"{stage} with {settings.relay} failed: {_describe(exc)}"
            raise _SetupError(_Failure(False, detail), stage) from exc
        except BaseException:
            smtp.close()
            raise
        self._open += 1
        log.debug(
            "smtp.session_opened",
            relay=settings.relay,
            tls=smtp.get_transport_info("sslcontext") is not None,
            authenticated=settings.username is not None,
        )
        return _Session(smtp)

    @staticmethod
    async def _greet(smtp: aiosmtplib.SMTP) -> None:
        """EHLO, falling back to HELO for a server that knows no ESMTP."""
        try:
            await smtp.ehlo()
        except aiosmtplib.SMTPHeloError:
            if not smtp.is_connected:
                raise
            await smtp.helo()

    async def _ehlo_name(self) -> str:
        """The configured EHLO name, else this machine's (looked up once: it may hit DNS)."""
        if self._local_hostname is None:
            self._local_hostname = await anyio.to_thread.run_sync(socket.getfqdn)
        return self._local_hostname

    async def aclose(self) -> None:
        """QUIT every idle session; sessions still in use are closed when their work ends."""
        self._closed = True
        idle, self._idle = self._idle, []
        async with anyio.create_task_group() as group:
            for session in idle:
                group.start_soon(self._retire, session)
