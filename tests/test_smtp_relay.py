"""The ``smtp`` transport against a real SMTP server on loopback.

The smarthost is aiosmtpd's SMTP protocol served on a free port of 127.0.0.1 in the test's own
event loop: every byte goes through real sockets (and real TLS where the test asks for it), and
the server counts what a relay operator would see: connections, sessions open at once, AUTH
mechanisms, and each message with its envelope.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email
import email.message
import email.policy
import ipaddress
import re
import socket
import ssl
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from core.send.service import SendService
from core.send.verp import VerpCodec
from core.storage import EventRecord
from core.testing import Harness
from core.transports import OutgoingMessage
from plugins.smtp_relay import SmtpRelayTransport, settings_from_options
from tests.conftest import postgres_url
from tests.postgres import fresh_database

pytestmark = pytest.mark.anyio

HOST = "127.0.0.1"
USER, PASSWORD = "scaisend", "s3cret-relay-password"
BOUNCE_DOMAIN = "bounces.example.net"


# The smarthost ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    tls: bool
    login: bytes | None


@dataclass
class Smarthost:
    """What the relay saw. ``replies`` scripts DATA answers per recipient, first one first."""

    replies: dict[str, list[str]] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    data_attempts: Counter[str] = field(default_factory=Counter)
    logins: list[tuple[str, bool]] = field(default_factory=list)
    sessions: set[int] = field(default_factory=set)
    open: set[int] = field(default_factory=set)
    peak_open: int = 0

    @property
    def connections(self) -> int:
        return len(self.sessions)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        (rcpt,) = envelope.rcpt_tos
        self.data_attempts[rcpt] += 1
        script = self.replies.get(rcpt)
        if script:
            return script.pop(0)
        login = session.auth_data.login if isinstance(session.auth_data, LoginPassword) else None
        self.received.append(
            Received(
                mail_from=envelope.mail_from or "",
                rcpt_tos=list(envelope.rcpt_tos),
                data=bytes(envelope.original_content or b""),
                tls=session.ssl is not None,
                login=login,
            )
        )
        return "250 2.0.0 queued as Q" + str(len(self.received))

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and auth_data == (
            USER.encode(),
            PASSWORD.encode(),
        )
        self.logins.append((mechanism, ok))
        return AuthResult(success=ok, handled=False, auth_data=auth_data)


class CountingSMTP(SMTP):
    """One per connection; tells the smarthost when it opens and closes.

    After STARTTLS aiosmtpd calls ``connection_made`` again for the same connection, so
    sessions are counted by protocol instance, not by call.
    """

    def __init__(self, host: Smarthost, **kwargs: Any) -> None:
        super().__init__(host, **kwargs)
        self.host = host

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.host.sessions.add(id(self))
        self.host.open.add(id(self))
        self.host.peak_open = max(self.host.peak_open, len(self.host.open))

    def connection_lost(self, exc: Exception | None) -> None:
        self.host.open.discard(id(self))
        super().connection_lost(exc)


@asynccontextmanager
async def smarthost(
    host: Smarthost | None = None, *, auth: bool = False, **smtp: Any
) -> AsyncIterator[tuple[Smarthost, int]]:
    """Serve ``host`` on a free loopback port; ``smtp`` goes to aiosmtpd's ``SMTP``.

    ``auth``: every session must log in, checked against ``USER`` and ``PASSWORD``.
    """
    host = host or Smarthost()
    if auth:
        smtp.update(authenticator=host.authenticate, auth_required=True)
    server = await asyncio.get_running_loop().create_server(
        lambda: CountingSMTP(host, **smtp), host=HOST, port=0
    )
    try:
        yield host, server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@dataclass(frozen=True)
class Certificates:
    ca_file: Path
    server_context: ssl.SSLContext


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """A throwaway certificate authority and a server certificate for 127.0.0.1 it signed."""
    folder = tmp_path_factory.mktemp("tls")
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ScaiSend test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST))]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file = folder / "ca.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    chain = folder / "server.pem"
    chain.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_file = folder / "server.key"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(chain, key_file)
    return Certificates(ca_file, context)


# The transport on its own ----------------------------------------------------------------


def relay(port: int, **options: Any) -> SmtpRelayTransport:
    return SmtpRelayTransport(
        settings_from_options(
            {
                "host": HOST,
                "port": port,
                "tls": "none",
                "local_hostname": "scaisend.test",
                "retry_backoff_seconds": 0,
                **options,
            }
        )
    )


def messages(count: int) -> list[OutgoingMessage]:
    return [
        OutgoingMessage(
            tenant="acme",
            message_id="m1",
            recipient=n,
            mail_from=f"b{n}@{BOUNCE_DOMAIN}",
            rcpt_to=f"r{n}@example.com",
            data=(
                f"From: news@example.org\r\nTo: r{n}@example.com\r\nSubject: Copy {n}\r\n"
                f"Message-ID: <m1.{n}@example.org>\r\n\r\nHello r{n}\r\n.leading dot\r\n"
            ).encode(),
        )
        for n in range(count)
    ]


async def deliver(transport: SmtpRelayTransport, batch: list[OutgoingMessage]) -> list[Any]:
    try:
        return await transport.deliver(batch)
    finally:
        await transport.aclose()


async def test_several_messages_travel_over_one_reused_connection():
    batch = messages(5)
    async with smarthost() as (host, port):
        results = await deliver(relay(port, max_connections=1), batch)
    assert [(r.outcome, r.smtp_code, r.attempts) for r in results] == [("delivered", 250, 1)] * 5
    assert host.connections == 1
    assert [(m.mail_from, m.rcpt_tos, m.data) for m in host.received] == [
        (m.mail_from, [m.rcpt_to], m.data) for m in batch
    ]


async def test_a_session_is_replaced_after_max_messages_per_connection():
    async with smarthost() as (host, port):
        results = await deliver(
            relay(port, max_connections=1, max_messages_per_connection=2), messages(5)
        )
    assert [r.outcome for r in results] == ["delivered"] * 5
    assert host.connections == 3
    assert host.peak_open == 1


@pytest.mark.parametrize("limit", [1, 3])
async def test_no_more_sessions_are_open_at_once_than_max_connections(limit):
    async with smarthost() as (host, port):
        results = await deliver(relay(port, max_connections=limit), messages(12))
    assert [r.outcome for r in results] == ["delivered"] * 12
    assert host.peak_open == limit
    assert host.connections == limit
    assert sorted(m.rcpt_tos[0] for m in host.received) == sorted(
        f"r{n}@example.com" for n in range(12)
    )


async def test_starttls_with_the_configured_ca_file_delivers_encrypted(certificates):
    async with smarthost(tls_context=certificates.server_context, require_starttls=True) as (
        host,
        port,
    ):
        results = await deliver(
            relay(port, tls="starttls", ca_file=str(certificates.ca_file)), messages(2)
        )
    assert [r.outcome for r in results] == ["delivered"] * 2
    assert [m.tls for m in host.received] == [True, True]


async def test_tls_starttls_never_sends_in_clear_to_a_relay_without_it():
    async with smarthost() as (host, port):
        results = await deliver(relay(port, tls="starttls", retry_attempts=1), messages(2))
    assert [(r.outcome, r.attempts) for r in results] == [("deferred", 2)] * 2
    assert "STARTTLS" in results[0].detail
    assert host.received == []
    assert host.data_attempts == Counter()


async def test_a_certificate_the_relay_does_not_trust_stops_delivery(certificates):
    async with smarthost(tls_context=certificates.server_context, require_starttls=True) as (
        host,
        port,
    ):
        # No ca_file: the system's authorities do not know the test CA.
        results = await deliver(relay(port, tls="starttls", retry_attempts=0), messages(1))
    assert [r.outcome for r in results] == ["deferred"]
    assert "certificate" in results[0].detail.lower()
    assert host.received == []


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
async def test_auth_with_username_and_password(certificates, mechanism):
    other = {"PLAIN": "LOGIN", "LOGIN": "PLAIN"}[mechanism]
    async with smarthost(
        tls_context=certificates.server_context,
        require_starttls=True,
        auth=True,
        auth_exclude_mechanism=[other],
    ) as (host, port):
        results = await deliver(
            relay(
                port,
                tls="starttls",
                ca_file=str(certificates.ca_file),
                username=USER,
                password=PASSWORD,
                max_connections=1,
            ),
            messages(3),
        )
    assert [r.outcome for r in results] == ["delivered"] * 3
    assert host.logins == [(mechanism, True)]
    assert [m.login for m in host.received] == [USER.encode()] * 3


async def test_refused_credentials_fail_every_message_without_retrying(certificates):
    async with smarthost(
        tls_context=certificates.server_context,
        require_starttls=True,
        auth=True,
    ) as (host, port):
        results = await deliver(
            relay(
                port,
                tls="starttls",
                ca_file=str(certificates.ca_file),
                username=USER,
                password="wrong",
                max_connections=1,
                retry_attempts=3,
            ),
            messages(3),
        )
    assert [(r.outcome, r.smtp_code, r.attempts) for r in results] == [("failed", 535, 1)] * 3
    # One session tried (aiosmtplib offers each mechanism the relay lists), no retry rounds.
    assert host.connections == 1
    assert host.logins
    assert not any(ok for _, ok in host.logins)
    assert host.received == []


async def test_a_4xx_reply_is_retried_and_then_delivered():
    host = Smarthost(replies={"r1@example.com": ["451 4.3.0 Try again later"]})
    async with smarthost(host) as (host, port):
        results = await deliver(relay(port, max_connections=1), messages(3))
    assert [(r.outcome, r.attempts) for r in results] == [
        ("delivered", 1),
        ("delivered", 2),
        ("delivered", 1),
    ]
    assert host.data_attempts == Counter(
        {"r0@example.com": 1, "r1@example.com": 2, "r2@example.com": 1}
    )
    assert sorted(m.rcpt_tos[0] for m in host.received) == [
        "r0@example.com",
        "r1@example.com",
        "r2@example.com",
    ]


async def test_a_5xx_reply_is_a_permanent_failure_never_retried():
    host = Smarthost(replies={"r1@example.com": ["550 5.1.1 No such user"]})
    async with smarthost(host) as (host, port):
        results = await deliver(relay(port, max_connections=1, retry_attempts=3), messages(3))
    failed = results[1]
    assert (failed.outcome, failed.smtp_code, failed.attempts) == ("failed", 550, 1)
    assert "No such user" in failed.detail
    assert [results[0].outcome, results[2].outcome] == ["delivered", "delivered"]
    assert host.data_attempts["r1@example.com"] == 1
    # The refusal ends that transaction, not the session: the next copy used it too.
    assert host.connections == 1


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


async def test_a_refused_connection_is_retried_then_deferred():
    results = await deliver(relay(closed_port(), retry_attempts=2), messages(2))
    assert [(r.outcome, r.attempts, r.smtp_code) for r in results] == [("deferred", 3, None)] * 2
    assert "connect" in results[0].detail


# Through the send path -------------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """``None``: the default SQLite file in the data directory; else a fresh PostgreSQL one."""
    if request.param == "sqlite":
        yield None
    else:
        with fresh_database(postgres_url()) as url:
            yield url


def harness_for(
    tmp_path: Path, port: int, database_url: str | None = None, **transport: Any
) -> Harness:
    return Harness(
        tmp_path,
        database_url=database_url,
        server={
            "bounce_domain": BOUNCE_DOMAIN,
            "transport": {
                "type": "smtp",
                "host": HOST,
                "port": port,
                "local_hostname": "scaisend.test",
                "retry_backoff_seconds": 0,
                **transport,
            },
        },
    )


def send_body(*addresses: str) -> dict[str, Any]:
    return {
        "personalizations": [{"to": [{"email": a}]} for a in addresses],
        "from": {"email": "news@example.org", "name": "News"},
        "subject": "Hello",
        "content": [
            {"type": "text/plain", "value": "Hi there"},
            {"type": "text/html", "value": "<html><body><p>Hi there</p></body></html>"},
        ],
    }


async def send(harness: Harness, body: dict[str, Any]) -> str:
    async with harness.serving() as client:
        response = await client.post(
            "/v3/mail/send",
            json=body,
            headers={"Authorization": f"Bearer {harness.api_key('acme')}"},
        )
        assert response.status_code == 202, await response.get_data()
        message_id = str((await response.get_json())["message_id"])
        await harness.background_work_done()
        assert harness.runtime.bus.flush()
    return message_id


def stable_lines(raw: bytes) -> list[bytes]:
    """A message's lines but Date and MIME boundaries (chosen anew for every compile)."""
    unbounded = re.sub(rb"=_scaisend_[0-9a-f]+", b"BOUNDARY", raw)
    return [line for line in unbounded.split(b"\r\n") if not line.startswith(b"Date:")]


def html_of(message: email.message.EmailMessage) -> str:
    part = message.get_body(("html",))
    assert part is not None
    return str(part.get_content())


def delivery_events(message_id: str) -> dict[str, tuple[str, dict[str, Any]]]:
    query = EventRecord.select().where(
        EventRecord.message_id == message_id, EventRecord.type != "processed"
    )
    return {e.recipient: (e.type, e.data) for e in query}


async def test_a_send_reaches_the_relay_as_each_recipients_mime_from_its_verp_sender(
    tmp_path, certificates, capfd
):
    async with smarthost(
        tls_context=certificates.server_context,
        require_starttls=True,
        auth=True,
    ) as (host, port):
        harness = harness_for(
            tmp_path,
            port,
            tls="starttls",
            ca_file=str(certificates.ca_file),
            username=USER,
            password=PASSWORD,
        )
        body = send_body("ann@example.com", "bob@example.com")
        message_id = await send(harness, body)
        async with harness.serving():
            expected = list(
                SendService(harness.runtime).outgoing(
                    SendService(harness.runtime).prepare(
                        harness.config.tenants["acme"], body, message_id=message_id
                    )
                )
            )

    assert sorted(m.rcpt_tos[0] for m in host.received) == ["ann@example.com", "bob@example.com"]
    codec = VerpCodec(harness.config.signing_keys)
    by_rcpt = {m.rcpt_tos[0]: m for m in host.received}
    for number, copy in enumerate(expected):
        got = by_rcpt[copy.rcpt_to]
        local, _, domain = got.mail_from.rpartition("@")
        assert (domain, codec.parse(local)) == (BOUNCE_DOMAIN, (message_id, number))
        assert got.mail_from == copy.mail_from
        assert stable_lines(got.data) == stable_lines(copy.data)
        assert (got.tls, got.login) == (True, USER.encode())
    # Each copy is its own message: its own Message-ID and open pixel token.
    parsed = [email.message_from_bytes(m.data, policy=email.policy.default) for m in host.received]
    assert len({m["Message-ID"] for m in parsed}) == 2
    pixels = [re.findall(r"/t/o/[^\"]+\.gif", html_of(m)) for m in parsed]
    assert [len(found) for found in pixels] == [1, 1]
    assert pixels[0] != pixels[1]

    events = delivery_events(message_id)
    assert {
        r: (kind, data["smtp_code"], data["attempts"]) for r, (kind, data) in events.items()
    } == {
        "ann@example.com": ("delivered", 250, 1),
        "bob@example.com": ("delivered", 250, 1),
    }
    logged = capfd.readouterr()
    assert PASSWORD not in logged.out + logged.err


async def test_relay_answers_become_delivered_and_bounce_events(tmp_path, database_url):
    host = Smarthost(
        replies={
            "later@example.com": ["451 4.7.1 Greylisted, try again"],
            "gone@example.com": ["550 5.1.1 <gone@example.com>: no such user"],
        }
    )
    async with smarthost(host) as (host, port):
        harness = harness_for(tmp_path, port, database_url, tls="none", retry_attempts=2)
        message_id = await send(
            harness, send_body("ok@example.com", "later@example.com", "gone@example.com")
        )
    events = delivery_events(message_id)
    assert events["ok@example.com"][0] == "delivered"
    assert events["ok@example.com"][1]["attempts"] == 1
    assert events["later@example.com"][0] == "delivered"
    assert events["later@example.com"][1]["attempts"] == 2
    kind, data = events["gone@example.com"]
    assert (kind, data["bounce_type"], data["smtp_code"], data["attempts"]) == (
        "bounce",
        "relay",
        550,
        1,
    )
    assert "no such user" in data["response"]
    assert host.data_attempts["gone@example.com"] == 1
    assert sorted(m.rcpt_tos[0] for m in host.received) == [
        "later@example.com",
        "ok@example.com",
    ]


async def test_an_unreachable_relay_defers_every_copy_after_its_retries(tmp_path):
    harness = harness_for(tmp_path, closed_port(), tls="none", retry_attempts=1)
    message_id = await send(harness, send_body("ann@example.com", "bob@example.com"))
    events = delivery_events(message_id)
    assert {r: (kind, data["attempts"]) for r, (kind, data) in events.items()} == {
        "ann@example.com": ("deferred", 2),
        "bob@example.com": ("deferred", 2),
    }
