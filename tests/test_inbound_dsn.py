"""Bounces and complaints end to end: a send goes out over SMTP, its report comes back to the
inbound listener over SMTP, and the copy it names gets its event and its suppression."""

from __future__ import annotations

import asyncio
import email
import email.utils
import json
import re
import smtplib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.app import INBOUND
from core.storage import EventRecord
from core.testing import Harness
from tests.test_storage import database_url  # noqa: F401 - fixture

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "bounces" / "corpus"
BOUNCES = "bounces.example.test"
FEEDBACK = "fbl.example.test"

T = TypeVar("T")


@dataclass
class Delivery:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    @property
    def message_id_header(self) -> str:
        return str(email.message_from_bytes(self.data)["Message-ID"])


@dataclass
class RemoteMx:
    """The receiving mail server the relay transport hands copies to."""

    deliveries: list[Delivery] = field(default_factory=list)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.deliveries.append(
            Delivery(
                envelope.mail_from or "",
                list(envelope.rcpt_tos),
                bytes(envelope.original_content or b""),
            )
        )
        return "250 OK"

    def to(self, address: str) -> Delivery:
        [found] = [d for d in self.deliveries if d.rcpt_tos == [address]]
        return found


@dataclass
class World:
    harness: Harness
    mx: RemoteMx
    inbound_port: int

    async def send(self, *to: str, tenant: str = "acme") -> str:
        client = self.harness.quart_app.test_client()
        response = await client.post(
            "/v3/mail/send",
            headers={"Authorization": f"Bearer {self.harness.api_key(tenant)}"},
            json={
                "personalizations": [{"to": [{"email": address} for address in to]}],
                "from": {"email": "news@example.org"},
                "subject": "Hello",
                "content": [{"type": "text/plain", "value": "Hi"}],
            },
        )
        assert response.status_code == 202, await response.get_data()
        await self.harness.background_work_done()
        return str((await response.get_json())["message_id"])

    async def report(self, rcpt: str, data: bytes) -> tuple[int, bytes]:
        """Deliver ``data`` to the inbound listener; the reply to DATA."""

        def session() -> tuple[int, bytes]:
            with smtplib.SMTP("127.0.0.1", self.inbound_port, timeout=10) as client:
                client.ehlo()
                assert client.mail("")[0] == 250
                assert client.rcpt(rcpt)[0] == 250
                return client.data(data)

        return await in_thread(session)

    async def events(self, *types: str) -> list[EventRecord]:
        assert await in_thread(self.harness.runtime.bus.flush)
        query = EventRecord.select().where(EventRecord.type.in_(types))
        return await in_thread(lambda: list(query.order_by(EventRecord.timestamp)))

    async def listed(self, tenant: str, address: str, kind: Any) -> bool:
        return await in_thread(
            lambda: self.harness.runtime.suppressions.contains(tenant, address, kind)
        )

    def kept(self, folder: str) -> list[Path]:
        directory = self.harness.config.data_dir / "inbound" / folder
        return sorted(directory.iterdir()) if directory.exists() else []


async def in_thread(call: Callable[[], T]) -> T:
    return await anyio.to_thread.run_sync(call)


@asynccontextmanager
async def world(tmp_path: Path, database_url: str | None = None) -> AsyncIterator[World]:  # noqa: F811
    mx = RemoteMx()
    server = await asyncio.get_running_loop().create_server(
        lambda: SMTP(mx), host="127.0.0.1", port=0
    )
    mx_port = server.sockets[0].getsockname()[1]
    harness = Harness(
        tmp_path,
        database_url=database_url,
        tenants={
            "acme": {"api_keys": ["acme-key-0123456789abcdef0123456789"]},
            "globex": {"api_keys": ["globex-key-0123456789abcdef012345678"]},
        },
        server={
            "bounce_domain": BOUNCES,
            "transport": {"type": "smtp", "host": "127.0.0.1", "port": mx_port, "tls": "none"},
            "smtp": {"feedback_domains": [FEEDBACK]},
        },
    )
    try:
        async with harness.serving():
            yield World(harness, mx, harness.quart_app.extensions[INBOUND].port)
    finally:
        server.close()
        await server.wait_closed()


def dsn(
    to: str,
    recipient: str,
    *,
    status: str = "5.1.1",
    action: str = "failed",
    diagnostic: str = "550 5.1.1 <{rcpt}>: user unknown",
    returned: str = "",
) -> bytes:
    """An RFC 3464 report as Postfix writes one, with the returned message's headers."""
    lines = [
        "From: MAILER-DAEMON@mx.example.net (Mail Delivery System)",
        f"To: {to}",
        "Subject: Undelivered Mail Returned to Sender",
        f"Date: {email.utils.formatdate()}",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        'Content-Type: multipart/report; report-type=delivery-status; boundary="BOUNDARY"',
        "",
        "--BOUNDARY",
        "Content-Type: text/plain; charset=us-ascii",
        "",
        "I'm sorry to have to inform you that your message could not",
        "be delivered to one or more recipients.",
        "",
        "--BOUNDARY",
        "Content-Type: message/delivery-status",
        "",
        "Reporting-MTA: dns; mx.example.net",
        "",
        f"Final-Recipient: rfc822; {recipient}",
        f"Original-Recipient: rfc822;{recipient}",
        f"Action: {action}",
        f"Status: {status}",
        "Remote-MTA: dns; mx.example.com",
        f"Diagnostic-Code: smtp; {diagnostic.format(rcpt=recipient)}",
        "",
        "--BOUNDARY",
        "Content-Type: text/rfc822-headers",
        "",
        returned or f"From: news@example.org\r\nTo: {recipient}\r\nSubject: Hello",
        "",
        "--BOUNDARY--",
        "",
    ]
    return "\r\n".join(lines).encode()


def arf(original: bytes, recipient: str, mail_from: str = "news@example.org") -> bytes:
    """An RFC 5965 complaint carrying the original message."""
    head = "\r\n".join(
        [
            "From: staff@fbl.mailbox.example",
            f"To: abuse@{FEEDBACK}",
            "Subject: complaint about message from 192.0.2.1",
            f"Date: {email.utils.formatdate()}",
            "MIME-Version: 1.0",
            'Content-Type: multipart/report; report-type=feedback-report; boundary="ARF"',
            "",
            "--ARF",
            "Content-Type: text/plain",
            "",
            "This is an email abuse report for an email message received from IP 192.0.2.1.",
            "",
            "--ARF",
            "Content-Type: message/feedback-report",
            "",
            "Feedback-Type: abuse",
            "User-Agent: MailboxFBL/1.0",
            "Version: 1",
            f"Original-Mail-From: <{mail_from}>",
            f"Original-Rcpt-To: <{recipient}>",
            "Source-IP: 192.0.2.1",
            "",
            "--ARF",
            "Content-Type: message/rfc822",
            "Content-Disposition: inline",
            "",
            "",
        ]
    )
    return head.encode() + original.rstrip(b"\r\n") + b"\r\n\r\n--ARF--\r\n"


@pytest.mark.anyio
async def test_a_bounce_to_the_envelope_sender_is_attributed_and_suppresses_the_next_send(
    tmp_path,
    database_url,  # noqa: F811
):
    async with world(tmp_path, database_url) as w:
        message_id = await w.send("ann@example.com", "bob@example.com")
        envelope_sender = w.mx.to("ann@example.com").mail_from
        assert envelope_sender.endswith(f"@{BOUNCES}")

        code, _ = await w.report(envelope_sender, dsn(envelope_sender, "ann@example.com"))
        assert code == 250

        [bounce] = await w.events("bounce")
        assert (bounce.tenant, bounce.message_id) == ("acme", message_id)
        assert bounce.recipient == "ann@example.com"
        assert bounce.data["recipient_number"] == 0
        assert bounce.data["attribution"] == "verp"
        assert bounce.data["status"] == "5.1.1"
        assert bounce.data["reply_code"] == "550"
        assert "user unknown" in bounce.data["diagnostic"]
        assert bounce.data["reason"] == "userunknown"
        assert bounce.data["reported_recipient"] == "ann@example.com"
        assert await w.listed("acme", "ann@example.com", "bounce")
        assert not await w.listed("acme", "bob@example.com", "bounce")
        assert not await w.listed("globex", "ann@example.com", "bounce")

        w.mx.deliveries.clear()
        second = await w.send("ann@example.com", "bob@example.com")
        assert [d.rcpt_tos for d in w.mx.deliveries] == [["bob@example.com"]]
        [dropped] = [e for e in await w.events("dropped") if e.message_id == second]
        assert dropped.recipient == "ann@example.com"
        assert dropped.data["suppression"] == "bounce"
    assert w.kept("unattributed") == []


@pytest.mark.anyio
async def test_a_complaint_is_attributed_by_the_original_message_id(tmp_path):
    async with world(tmp_path) as w:
        message_id = await w.send("ann@example.com", "bob@example.com")
        original = w.mx.to("bob@example.com")
        assert original.message_id_header.startswith(f"<{message_id}.1@")

        code, _ = await w.report(f"abuse@{FEEDBACK}", arf(original.data, "bob@example.com"))
        assert code == 250

        [complaint] = await w.events("spamreport")
        assert (complaint.message_id, complaint.recipient) == (message_id, "bob@example.com")
        assert complaint.data["attribution"] == "message_id"
        assert complaint.data["feedback_type"] == "abuse"
        assert await w.listed("acme", "bob@example.com", "spamreport")
        assert not await w.listed("acme", "ann@example.com", "spamreport")
        assert await w.events("bounce") == []


@pytest.mark.anyio
async def test_a_complaint_naming_the_envelope_sender_is_attributed_by_it(tmp_path):
    async with world(tmp_path) as w:
        message_id = await w.send("ann@example.com", "bob@example.com")
        copy = w.mx.to("bob@example.com")
        # Mailbox providers often redact the copy they return: no Message-ID, no address.
        redacted = b"From: news@example.org\r\nSubject: Hello\r\n\r\nHi\r\n"
        complaint = arf(redacted, "redacted@mailbox.example", mail_from=copy.mail_from)

        assert (await w.report(f"abuse@{FEEDBACK}", complaint))[0] == 250

        [spamreport] = await w.events("spamreport")
        assert (spamreport.message_id, spamreport.recipient) == (message_id, "bob@example.com")
        assert spamreport.data["attribution"] == "verp"
        assert await w.listed("acme", "bob@example.com", "spamreport")


@pytest.mark.anyio
async def test_a_temporary_failure_is_deferred_and_suppresses_nothing(tmp_path):
    async with world(tmp_path) as w:
        message_id = await w.send("ann@example.com")
        sender = w.mx.to("ann@example.com").mail_from
        report = dsn(
            sender,
            "ann@example.com",
            status="4.2.2",
            action="delayed",
            diagnostic="452 4.2.2 <{rcpt}>: mailbox full, over quota",
        )
        assert (await w.report(sender, report))[0] == 250

        [deferred] = await w.events("deferred", "blocked", "bounce")
        assert (deferred.type, deferred.message_id) == ("deferred", message_id)
        assert deferred.data["status"] == "4.2.2"
        assert deferred.data["hard"] is False
        assert not await w.listed("acme", "ann@example.com", "bounce")


@pytest.mark.anyio
async def test_a_bounce_quoting_a_nul_is_recorded_not_retried_forever(
    tmp_path,
    database_url,  # noqa: F811
):
    # PostgreSQL refuses NUL in text and JSON; a 451 would have the sender retry for days.
    async with world(tmp_path, database_url) as w:
        message_id = await w.send("ann@example.com")
        sender = w.mx.to("ann@example.com").mail_from
        report = dsn(sender, "ann@example.com", diagnostic="550 5.1.1 no\x00such user")
        assert (await w.report(sender, report))[0] == 250

        [bounce] = await w.events("bounce")
        assert bounce.message_id == message_id
        assert bounce.data["diagnostic"] == "550 5.1.1 no\ufffdsuch user"
        entry = await in_thread(
            lambda: w.harness.runtime.suppressions.get("acme", "ann@example.com", "bounce")
        )
        assert entry is not None
        assert entry.reason == "550 5.1.1 no\ufffdsuch user"
    assert w.kept("unattributed") == []


@pytest.mark.anyio
async def test_a_bounce_names_only_the_tenant_that_sent_the_copy(tmp_path):
    async with world(tmp_path) as w:
        await w.send("ann@example.com", tenant="acme")
        globex_id = await w.send("ann@example.com", tenant="globex")
        globex_copy = [d for d in w.mx.deliveries if globex_id in d.message_id_header]
        sender = globex_copy[0].mail_from

        assert (await w.report(sender, dsn(sender, "ann@example.com")))[0] == 250

        [bounce] = await w.events("bounce")
        assert (bounce.tenant, bounce.message_id) == ("globex", globex_id)
        assert await w.listed("globex", "ann@example.com", "bounce")
        assert not await w.listed("acme", "ann@example.com", "bounce")


@pytest.mark.anyio
async def test_a_forged_envelope_code_cannot_suppress_an_address(tmp_path):
    async with world(tmp_path) as w:
        message_id = await w.send("ann@example.com")
        genuine = w.mx.to("ann@example.com").mail_from
        local = genuine.split("@")[0]
        forged = f"{local[:-4]}{'aaaa' if local[-4:] != 'aaaa' else 'bbbb'}@{BOUNCES}"
        report = dsn(forged, "ann@example.com", returned="Subject: no identifying headers")

        assert (await w.report(forged, report))[0] == 250

        [bounce] = await w.events("bounce")
        assert (bounce.message_id, bounce.data["attribution"]) == (message_id, "recipient")
        assert not await w.listed("acme", "ann@example.com", "bounce")


@pytest.mark.anyio
async def test_a_report_about_mail_never_sent_is_kept_and_changes_nothing(tmp_path):
    async with world(tmp_path) as w:
        await w.send("ann@example.com")
        report = dsn(f"nobody@{BOUNCES}", "stranger@example.net")

        assert (await w.report(f"nobody@{BOUNCES}", report))[0] == 250

        assert await w.events("bounce", "deferred", "blocked", "spamreport") == []
        assert not await w.listed("acme", "stranger@example.net", "bounce")
        [kept] = w.kept("unattributed")
        stored = email.message_from_bytes(kept.read_bytes())
        assert stored["Delivered-To"] == f"nobody@{BOUNCES}"
        assert kept.read_bytes().endswith(report)


@pytest.mark.anyio
async def test_an_auto_reply_is_recognised_and_not_a_bounce(tmp_path):
    async with world(tmp_path) as w:
        await w.send("ann@example.com")
        sender = w.mx.to("ann@example.com").mail_from
        reply = (
            f"From: Ann <ann@example.com>\r\nTo: {sender}\r\n"
            "Subject: Out of office: Hello\r\nAuto-Submitted: auto-replied\r\n"
            "X-Autoreply: yes\r\n\r\nI am away until Monday and will answer then.\r\n"
        ).encode()

        assert (await w.report(sender, reply))[0] == 250

        assert await w.events("bounce", "deferred", "blocked", "spamreport") == []
        assert not await w.listed("acme", "ann@example.com", "bounce")
        assert w.kept("unattributed") == []


@pytest.mark.anyio
async def test_a_delivery_notice_is_recognised_and_not_a_bounce(tmp_path):
    async with world(tmp_path) as w:
        await w.send("ann@example.com")
        sender = w.mx.to("ann@example.com").mail_from
        notice = dsn(
            sender, "ann@example.com", status="2.0.0", action="delivered", diagnostic="250 2.0.0 OK"
        )

        assert (await w.report(sender, notice))[0] == 250

        assert await w.events("bounce", "deferred", "blocked", "spamreport") == []
        assert not await w.listed("acme", "ann@example.com", "bounce")


@pytest.mark.anyio
async def test_a_bounce_sent_elsewhere_is_attributed_by_its_x_message_id(tmp_path):
    async with world(tmp_path) as w:
        message_id = await w.send("ann@example.com", "bob@example.com")
        returned = f"X-Message-Id: {message_id}\r\nFrom: news@example.org\r\nTo: bob@example.com"
        report = dsn(f"postmaster@{BOUNCES}", "bob@example.com", returned=returned)

        assert (await w.report(f"postmaster@{BOUNCES}", report))[0] == 250

        [bounce] = await w.events("bounce")
        assert (bounce.message_id, bounce.recipient) == (message_id, "bob@example.com")
        assert (bounce.data["attribution"], bounce.data["recipient_number"]) == ("x_message_id", 1)
        assert await w.listed("acme", "bob@example.com", "bounce")
        assert not await w.listed("acme", "ann@example.com", "bounce")


@pytest.mark.anyio
async def test_ordinary_mail_to_the_bounce_domain_is_kept_for_a_person(tmp_path):
    async with world(tmp_path) as w:
        letter = (
            f"From: someone@example.net\r\nTo: postmaster@{BOUNCES}\r\n"
            "Subject: question about your newsletter\r\n\r\nHow do I get the archive?\r\n"
        ).encode()

        assert (await w.report(f"postmaster@{BOUNCES}", letter))[0] == 250

        assert await w.events("bounce", "deferred", "blocked", "spamreport") == []
        [kept] = w.kept("unclaimed")
        assert kept.read_bytes().endswith(letter)


FIELD_TEXT = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\r\n"), max_size=80
)


@pytest.mark.anyio
async def test_any_report_is_answered_250_never_451(tmp_path):
    """Whatever a report holds, the sender is never told to retry it forever."""
    async with world(tmp_path) as w:
        await w.send("ann@example.com")
        sender = w.mx.to("ann@example.com").mail_from

        @settings(
            max_examples=40,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture],
        )
        @given(
            recipient=st.one_of(st.just("ann@example.com"), st.emails(), FIELD_TEXT),
            status=st.one_of(st.from_regex(r"\A[245]\.\d{1,3}\.\d{1,3}\Z"), FIELD_TEXT),
            action=st.sampled_from(["failed", "delayed", "delivered", "relayed", "", "x"]),
            diagnostic=FIELD_TEXT,
            rcpt=st.sampled_from([sender, f"nobody@{BOUNCES}", f"abuse@{FEEDBACK}"]),
        )
        def answered(recipient: str, status: str, action: str, diagnostic: str, rcpt: str) -> None:
            report = dsn(
                rcpt,
                recipient,
                status=status,
                action=action,
                diagnostic=diagnostic.replace("{", "(").replace("}", ")"),
            )
            with smtplib.SMTP("127.0.0.1", w.inbound_port, timeout=10) as client:
                client.ehlo()
                client.mail("")
                client.rcpt(rcpt)
                assert client.data(report)[0] == 250

        await in_thread(answered)


def _log_events(text: str, *names: str) -> list[dict[str, Any]]:
    events = []
    for line in text.splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            if event.get("event") in names:
                events.append(event)
    return events


@pytest.mark.anyio
async def test_every_real_report_is_accepted_and_accounted_for(tmp_path, capfd):
    """The whole corpus of real bounces, complaints and auto-replies through one listener:
    each is answered 250 and either claimed or kept, and whatever is not attributed (nothing
    was sent here) is on disk."""
    paths = sorted(CORPUS.rglob("*.eml"))
    assert len(paths) > 500

    def deliver_all(port: int) -> list[int]:
        codes = []
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            for path in paths:
                # On the wire every line ends in CRLF, and no mbox "From " line is sent.
                lines = re.split(rb"\r\n|\r|\n", path.read_bytes())
                data = b"\r\n".join(lines[1:] if lines[0].startswith(b"From ") else lines)
                client.ehlo_or_helo_if_needed()
                client.mail("")
                client.rcpt(f"bounce@{BOUNCES}")
                codes.append(client.data(data)[0])
                client.rset()
        return codes

    async with world(tmp_path) as w:
        capfd.readouterr()
        codes = await in_thread(lambda: deliver_all(w.inbound_port))
        logged = capfd.readouterr().err

    assert codes == [250] * len(paths)
    claimed = _log_events(logged, "inbound.claimed")
    unclaimed = _log_events(logged, "inbound.unclaimed")
    assert len(claimed) + len(unclaimed) == len(paths)
    unattributed = [e for e in claimed if e["outcome"] == "unattributed"]
    assert {e["outcome"] for e in claimed} <= {"unattributed", "ignored"}
    assert len(w.kept("unattributed")) == len(unattributed) > 400
    assert len(w.kept("unclaimed")) == len(unclaimed)
    assert await w.events("bounce", "deferred", "blocked", "spamreport") == []
