"""The inbound SMTP listener through real SMTP sessions: which recipients it takes, its limits,
junk, STARTTLS, and how plugins' answers become replies."""

from __future__ import annotations

import datetime as dt
import email
import ipaddress
import smtplib
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from core.app import INBOUND
from core.config import ConfigError
from core.hookspecs import hookimpl
from core.inbound import UNATTRIBUTED_DIR, UNCLAIMED_DIR, InboundMessage, keep, prune
from core.plugins import SINK_PLUGINS, TRANSPORT_PLUGINS
from core.runtime import Runtime
from core.testing import Harness, base_document
from tests.serving import ScaisendServer, free_port, wait_for

BOUNCES = "bounces.example.test"
FEEDBACK = "fbl.example.test"
WITHOUT_INBOUND_PLUGINS = SINK_PLUGINS + TRANSPORT_PLUGINS
REPORT = (
    b"From: MAILER-DAEMON@mx.example.net\r\n"
    b"To: b1@bounces.example.test\r\n"
    b"Subject: Undelivered Mail Returned to Sender\r\n"
    b"\r\n"
    b"It did not work.\r\n"
)

T = TypeVar("T")


class Recorder:
    """Claims every message and keeps it."""

    def __init__(self, outcome: str | None = "recorded") -> None:
        self.outcome = outcome
        self.messages: list[InboundMessage] = []

    @hookimpl
    async def handle_inbound_mail(self, message: InboundMessage, runtime: Runtime) -> Any:
        assert runtime.config.bounce_domain == BOUNCES
        self.messages.append(message)
        return self.outcome


class Failing:
    """Raises on every message, before any other plugin is asked."""

    def __init__(self) -> None:
        self.calls = 0

    @hookimpl(tryfirst=True)
    def handle_inbound_mail(self, message: InboundMessage) -> Any:
        self.calls += 1
        raise RuntimeError("cannot handle this")


class Hanging:
    """Never answers."""

    @hookimpl(tryfirst=True)
    async def handle_inbound_mail(self, message: InboundMessage) -> Any:
        await anyio.Event().wait()


def _harness(tmp_path: Path, *plugins: object, **smtp: Any) -> Harness:
    return Harness(
        tmp_path,
        plugins=plugins,
        builtins=WITHOUT_INBOUND_PLUGINS,
        server={
            "bounce_domain": BOUNCES,
            "plugin_timeout_seconds": 0.5,
            "smtp": {
                "feedback_domains": [FEEDBACK],
                "max_recipients": 3,
                "max_message_bytes": 4096,
                **smtp,
            },
        },
    )


@asynccontextmanager
async def listening(harness: Harness) -> AsyncIterator[int]:
    """Serve the app as ``scaisend serve`` does (its startup and shutdown); the SMTP port."""
    async with harness.serving():
        yield harness.quart_app.extensions[INBOUND].port


async def in_thread(call: Callable[[], T]) -> T:
    return await anyio.to_thread.run_sync(call)


def _client(port: int) -> smtplib.SMTP:
    return smtplib.SMTP("127.0.0.1", port, timeout=10)


def _send(port: int, rcpts: list[str], data: bytes = REPORT, sender: str = "") -> Any:
    with _client(port) as client:
        return client.sendmail(sender, rcpts, data)


def _raw(port: int, data: bytes, rcpt: str = f"b1@{BOUNCES}") -> tuple[int, bytes]:
    """MAIL, RCPT and DATA by hand (no SIZE declared): the reply to the data."""
    with _client(port) as client:
        client.ehlo()
        assert client.mail("")[0] == 250
        assert client.rcpt(rcpt)[0] == 250
        return client.data(data)


@pytest.mark.anyio
async def test_a_message_for_the_bounce_domain_reaches_the_plugin_unaltered(tmp_path):
    recorder = Recorder()
    harness = _harness(tmp_path, recorder)
    async with listening(harness) as port:
        refused = await in_thread(lambda: _send(port, [f"bXYZ@{BOUNCES}"], sender="mta@x.test"))
    assert refused == {}
    [message] = recorder.messages
    assert message.rcpt_tos == (f"bXYZ@{BOUNCES}",)
    assert message.mail_from == "mta@x.test"
    assert message.data == REPORT
    assert message.peer == "127.0.0.1"


@pytest.mark.anyio
async def test_feedback_domains_are_accepted_and_domains_compare_without_case(tmp_path):
    recorder = Recorder()
    harness = _harness(tmp_path, recorder)
    async with listening(harness) as port:
        await in_thread(lambda: _send(port, [f"abuse@{FEEDBACK}", "x@BOUNCES.Example.TEST"]))
    assert recorder.messages[0].rcpt_tos == (f"abuse@{FEEDBACK}", "x@BOUNCES.Example.TEST")


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("rcpt", "expected"),
    [
        ("ann@example.com", 550),
        (f"x@sub.{BOUNCES}", 550),
        (f"x@{BOUNCES}.evil.test", 550),
        (BOUNCES, 550),
        (f"@{BOUNCES}", 553),  # not an address at all: aiosmtpd's syntax error
    ],
)
async def test_other_recipients_are_refused_with_550_5_1_1(tmp_path, rcpt, expected):
    recorder = Recorder()
    harness = _harness(tmp_path, recorder)

    def attempt() -> tuple[int, bytes]:
        with _client(port) as client:
            client.ehlo()
            client.mail("")
            return client.rcpt(rcpt)

    async with listening(harness) as port:
        code, text = await in_thread(attempt)
    assert code == expected
    assert text.startswith(b"5.1.1") or expected != 550
    assert recorder.messages == []


@pytest.mark.anyio
async def test_recipients_beyond_the_limit_get_452_and_the_rest_are_delivered(tmp_path):
    recorder = Recorder()
    harness = _harness(tmp_path, recorder)
    rcpts = [f"r{n}@{BOUNCES}" for n in range(5)]
    async with listening(harness) as port:
        refused = await in_thread(lambda: _send(port, rcpts))
    assert {rcpt: code for rcpt, (code, _) in refused.items()} == {rcpts[3]: 452, rcpts[4]: 452}
    assert recorder.messages[0].rcpt_tos == tuple(rcpts[:3])


@pytest.mark.anyio
async def test_a_declared_size_over_the_limit_is_refused_with_552(tmp_path):
    recorder = Recorder()
    harness = _harness(tmp_path, recorder)
    big = REPORT + (b"x" * 70 + b"\r\n") * 100
    async with listening(harness) as port:
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            await in_thread(lambda: _send(port, [f"b@{BOUNCES}"], big))
    assert refused.value.smtp_code == 552
    assert recorder.messages == []


@pytest.mark.anyio
async def test_lines_longer_than_rfc_5321_allows_are_taken_as_they_come(tmp_path):
    recorder = Recorder()
    harness = _harness(tmp_path, recorder)
    quoted = REPORT + b"X-Long: " + b"z" * 3000 + b"\r\n"
    async with listening(harness) as port:
        assert await in_thread(lambda: _send(port, [f"b@{BOUNCES}"], quoted)) == {}
    assert [m.data for m in recorder.messages] == [quoted]


@pytest.mark.anyio
async def test_data_over_the_limit_is_refused_with_552_and_the_session_goes_on(tmp_path):
    recorder = Recorder()
    harness = _harness(tmp_path, recorder)
    big = REPORT + (b"y" * 76 + b"\r\n") * 60

    def session() -> tuple[tuple[int, bytes], dict[str, Any]]:
        with _client(port) as client:
            client.ehlo()
            client.mail("")
            client.rcpt(f"b@{BOUNCES}")
            first = client.data(big)
            return first, client.sendmail("", [f"b@{BOUNCES}"], REPORT)

    async with listening(harness) as port:
        (code, _), refused = await in_thread(session)
    assert code == 552
    assert refused == {}
    assert [m.data for m in recorder.messages] == [REPORT]


@pytest.mark.anyio
@pytest.mark.parametrize(
    "junk",
    [
        b"\x00\xff\xfe garbage \x80\x81\r\n\r\nmore",
        b"no header here, just text\r\n",
        b"\r\nbody without headers\r\n",
        b"",
    ],
)
async def test_data_without_a_header_section_is_refused_with_554(tmp_path, junk):
    recorder = Recorder()
    harness = _harness(tmp_path, recorder)
    async with listening(harness) as port:
        code, _ = await in_thread(lambda: _raw(port, junk))
    assert code == 554
    assert recorder.messages == []


@pytest.mark.anyio
async def test_junk_commands_are_answered_and_the_session_still_delivers(tmp_path):
    recorder = Recorder()
    harness = _harness(tmp_path, recorder)

    def session() -> list[int]:
        with _client(port) as client:
            client.sock.sendall(b"\x00\x01HELLO\xff\xfe\r\n")
            codes = [client.getreply()[0], client.docmd("MAIL", "nonsense")[0]]
            codes.append(client.docmd("RCPT TO:<a@" + "x" * 2000 + ">")[0])
            codes.append(client.docmd("DATA")[0])
            client.rset()
            client.sendmail("", [f"b@{BOUNCES}"], REPORT)
            return codes

    async with listening(harness) as port:
        codes = await in_thread(session)
    assert all(500 <= code < 600 for code in codes), codes
    assert [m.data for m in recorder.messages] == [REPORT]


@pytest.mark.anyio
async def test_a_message_that_cannot_be_kept_gets_451_and_the_session_goes_on(tmp_path):
    harness = _harness(tmp_path, Recorder(outcome=None))
    harness.config.data_dir.mkdir(parents=True)
    (harness.config.data_dir / "inbound").write_bytes(b"not a directory")

    def session() -> tuple[tuple[int, bytes], int]:
        with _client(port) as client:
            client.ehlo()
            client.mail("")
            client.rcpt(f"b@{BOUNCES}")
            return client.data(REPORT), client.mail("")[0]

    async with listening(harness) as port:
        (code, text), next_mail = await in_thread(session)
    assert (code, text[:5], next_mail) == (451, b"4.3.0", 250)


@pytest.mark.anyio
async def test_a_failing_plugin_is_skipped_for_the_next_one(tmp_path):
    failing, recorder = Failing(), Recorder()
    harness = _harness(tmp_path, failing, recorder)
    async with listening(harness) as port:
        refused = await in_thread(lambda: _send(port, [f"b@{BOUNCES}"]))
    assert refused == {}
    assert failing.calls == 1
    assert len(recorder.messages) == 1


@pytest.mark.anyio
@pytest.mark.parametrize("plugin", [Failing, Hanging])
async def test_when_no_plugin_succeeds_the_client_is_told_to_try_again_later(tmp_path, plugin):
    harness = _harness(tmp_path, plugin(), Recorder(outcome=None))
    async with listening(harness) as port:
        code, text = await in_thread(lambda: _raw(port, REPORT))
    assert (code, text[:5]) == (451, b"4.3.0")
    assert not (harness.config.data_dir / "inbound" / "unclaimed").exists()


@pytest.mark.anyio
async def test_a_message_no_plugin_claims_is_kept_with_its_envelope(tmp_path):
    passing = Recorder(outcome=None)
    harness = _harness(tmp_path, passing)
    async with listening(harness) as port:
        refused = await in_thread(
            lambda: _send(port, [f"b1@{BOUNCES}", f"abuse@{FEEDBACK}"], sender="mta@x.test")
        )
    assert refused == {}
    assert len(passing.messages) == 1
    [kept] = (harness.config.data_dir / "inbound" / "unclaimed").iterdir()
    assert kept.suffix == ".eml"
    parsed = email.message_from_bytes(kept.read_bytes())
    assert parsed["Return-Path"] == "<mta@x.test>"
    assert parsed.get_all("Delivered-To") == [f"b1@{BOUNCES}", f"abuse@{FEEDBACK}"]
    assert kept.read_bytes().endswith(REPORT)


FIELD_NAME = st.from_regex(r"\A[A-Za-z][A-Za-z0-9-]{0,20}\Z")
LINE = st.binary(max_size=200).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
NOT_A_FIELD_START = st.sampled_from([b"\r\n", b" ", b"\t", b":", b"\x80", b"\xff", b"\x00"])
EXAMPLES = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.mark.anyio
async def test_any_data_gets_250_or_554_and_never_breaks_the_session(tmp_path):
    recorder = Recorder()
    harness = _harness(tmp_path, recorder, max_message_bytes=1024 * 1024)

    @EXAMPLES
    @given(name=FIELD_NAME, value=LINE, body=st.binary(max_size=5000))
    def headed(name: str, value: bytes, body: bytes) -> None:
        data = name.encode() + b": " + value + b"\r\n" + body
        with _client(port) as client:
            client.ehlo()
            client.mail("")
            client.rcpt(f"b@{BOUNCES}")
            assert client.data(data)[0] == 250
            assert client.noop()[0] == 250
        assert recorder.messages[-1].data.startswith(name.encode() + b": ")

    @EXAMPLES
    @given(start=NOT_A_FIELD_START, rest=st.binary(max_size=5000))
    def headless(start: bytes, rest: bytes) -> None:
        count = len(recorder.messages)
        with _client(port) as client:
            client.ehlo()
            client.mail("")
            client.rcpt(f"b@{BOUNCES}")
            assert client.data(start + rest)[0] == 554
            assert client.noop()[0] == 250
        assert len(recorder.messages) == count

    async with listening(harness) as port:
        await in_thread(headed)
        await in_thread(headless)


def _certificate(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "inbound test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


@pytest.mark.anyio
async def test_starttls_is_offered_when_configured_and_mail_flows_over_it(tmp_path):
    cert_file, key_file = _certificate(tmp_path)
    recorder = Recorder()
    harness = _harness(
        tmp_path, recorder, tls={"cert_file": str(cert_file), "key_file": str(key_file)}
    )

    def session() -> tuple[bool, str | None]:
        with _client(port) as client:
            client.ehlo()
            offered = client.has_extn("starttls")
            client.starttls(context=ssl.create_default_context(cafile=str(cert_file)))
            cipher = client.sock.cipher()[0] if isinstance(client.sock, ssl.SSLSocket) else None
            client.sendmail("", [f"b@{BOUNCES}"], REPORT)
            return offered, cipher

    async with listening(harness) as port:
        offered, cipher = await in_thread(session)
    assert offered
    assert cipher
    assert [m.data for m in recorder.messages] == [REPORT]


@pytest.mark.anyio
async def test_without_tls_settings_starttls_is_not_offered(tmp_path):
    harness = _harness(tmp_path, Recorder())

    def offered() -> tuple[bool, int]:
        with _client(port) as client:
            client.ehlo()
            return client.has_extn("starttls"), client.docmd("STARTTLS")[0]

    async with listening(harness) as port:
        assert await in_thread(offered) == (False, 454)


@pytest.mark.anyio
async def test_the_listener_stops_with_the_server(tmp_path):
    harness = _harness(tmp_path, Recorder())
    async with listening(harness) as port:
        pass
    with pytest.raises(ConnectionRefusedError):
        _client(port)


def test_smtp_limits_are_validated(tmp_path):
    with pytest.raises(ConfigError) as error:
        _harness(tmp_path, max_recipients=0, max_message_bytes=10, feedback_domains=["a b"])
    paths = {problem.path for problem in error.value.problems}
    assert {
        "server.smtp.max_recipients",
        "server.smtp.max_message_bytes",
        "server.smtp.feedback_domains.0",
    } <= paths


def test_scaisend_serve_runs_the_listener_on_the_configured_address(tmp_path):
    smtp_port = free_port()
    http_port = free_port()
    document = base_document(tmp_path / "data")
    document["server"]["http"] = {"host": "127.0.0.1", "port": http_port}
    document["server"]["smtp"] = {"host": "127.0.0.1", "port": smtp_port}
    config = tmp_path / "scaisend.yaml"
    config.write_text(yaml.safe_dump(document))

    with ScaisendServer("--config", str(config), port=http_port) as server:

        def answers() -> bool:
            server.assert_running()
            try:
                with _client(smtp_port) as client:
                    return client.noop()[0] == 250
            except OSError:
                return False

        wait_for(answers, "the SMTP listener")
        with _client(smtp_port) as client:
            client.ehlo()
            client.mail("")
            assert client.rcpt("someone@example.com")[0] == 550
    assert server.process.returncode == 0
    with pytest.raises(ConnectionRefusedError):
        _client(smtp_port)


def _open_session(port: int) -> tuple[socket.socket, bytes]:
    """A raw connection and the first line the listener sends on it."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return sock, sock.makefile("rb").readline()


def _rest(sock: socket.socket) -> bytes:
    """Everything the listener sends until it closes the connection."""
    received = b""
    while chunk := sock.recv(4096):
        received += chunk
    return received


def _quit(sock: socket.socket) -> bytes:
    """End a session and wait for the listener to close it, which frees its place."""
    sock.sendall(b"QUIT\r\n")
    with sock:
        return _rest(sock)


@pytest.mark.anyio
async def test_sessions_beyond_the_limit_get_421_and_a_closed_session_frees_its_place(tmp_path):
    def scenario() -> None:
        held = [_open_session(port) for _ in range(3)]
        assert all(greeting.startswith(b"220 ") for _, greeting in held)

        extra, refusal = _open_session(port)
        with extra:
            assert refusal.startswith(b"421 4.7.0 ")
            extra.sendall(b"EHLO client.example.test\r\n")
            try:
                unanswered = _rest(extra)
            except ConnectionResetError:  # closed with the command unread
                unanswered = b""
            assert unanswered == b""

        assert _quit(held[0][0]).startswith(b"221")
        again, greeting = _open_session(port)
        assert greeting.startswith(b"220 ")
        refused, refusal = _open_session(port)  # the freed place is taken again
        with refused:
            assert refusal.startswith(b"421 4.7.0 ")

        for sock in [again] + [sock for sock, _ in held[1:]]:
            _quit(sock)
        assert _send(port, [f"b@{BOUNCES}"]) == {}

    recorder = Recorder()
    harness = _harness(tmp_path, recorder, max_sessions=3)
    async with listening(harness) as port:
        await in_thread(scenario)
    assert [message.data for message in recorder.messages] == [REPORT]


def _kept_at(directory: Path, second: int, data: bytes = REPORT) -> Path:
    received_at = dt.datetime(2026, 1, 1, 0, 0, second, tzinfo=dt.UTC)
    return keep(InboundMessage("", (f"b@{BOUNCES}",), data, received_at=received_at), directory)


def test_pruning_removes_the_oldest_messages_never_the_newest_nor_one_being_written(tmp_path):
    # Kept out of order, so the order of writing says nothing about which is oldest.
    paths = {second: _kept_at(tmp_path, second) for second in (3, 1, 4, 2)}
    size = paths[1].stat().st_size
    writing = tmp_path / ".20260101T000005000000-abc.eml.part"
    writing.write_bytes(b"x" * size * 10)

    assert prune(tmp_path, 2 * size + 1) == 2
    assert sorted(tmp_path.glob("*.eml")) == [paths[3], paths[4]]
    assert prune(tmp_path, 2 * size) == 0
    assert prune(tmp_path, 0) == 1
    assert sorted(tmp_path.glob("*.eml")) == [paths[4]]
    assert writing.exists()
    assert prune(tmp_path / "missing", 0) == 0


class KeepsUnattributed:
    """Files every message as a report naming nothing sent, as the DSN plugin does."""

    @hookimpl
    def handle_inbound_mail(self, message: InboundMessage, runtime: Runtime) -> Any:
        keep(message, runtime.config.data_dir / UNATTRIBUTED_DIR)
        return "unattributed"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("plugin", "folder"),
    [(Recorder(outcome=None), UNCLAIMED_DIR), (KeepsUnattributed(), UNATTRIBUTED_DIR)],
)
async def test_kept_messages_beyond_the_cap_are_pruned_oldest_first(tmp_path, plugin, folder):
    reports = [REPORT + f"report {n}\r\n".encode() for n in range(5)]
    size = len(InboundMessage("", (f"b@{BOUNCES}",), reports[0]).as_eml())
    harness = _harness(tmp_path, plugin, max_kept_bytes=2 * size)

    def session() -> None:
        with _client(port) as client:
            for report in reports:
                assert client.sendmail("", [f"b@{BOUNCES}"], report) == {}

    with capture_logs() as logs:
        async with listening(harness) as port:
            await in_thread(session)
    kept = sorted((harness.config.data_dir / folder).iterdir())
    assert [path.read_bytes().split(b"\r\n", 2)[2] for path in kept] == reports[-2:]
    assert kept[0].read_bytes().startswith(b"Return-Path: <>\r\n")  # the null sender
    pruned = [entry for entry in logs if entry["event"] == "inbound.pruned"]
    assert sum(entry["removed"] for entry in pruned) == 3
    assert {entry["directory"] for entry in pruned} == {str(harness.config.data_dir / folder)}


def test_session_and_kept_bytes_limits_are_validated(tmp_path):
    with pytest.raises(ConfigError) as error:
        _harness(tmp_path, max_sessions=0, max_kept_bytes=-1)
    paths = {problem.path for problem in error.value.problems}
    assert {"server.smtp.max_sessions", "server.smtp.max_kept_bytes"} <= paths
