"""``POST /v3/mail/send``: authentication, validation, and the messages that come out."""

from __future__ import annotations

import base64
import copy
import datetime as dt
import email
import email.header
import email.policy
import email.utils
import json
import re

import pytest

from core.send.service import SendService
from core.send.verp import VerpCodec
from core.storage import EventRecord, Message, MessageRecipient
from core.testing import Harness, random_secret

pytestmark = pytest.mark.anyio

BOUNCE_DOMAIN = "bounces.mail.example.net"
NO_TRACKING = {"open_tracking": {"enable": False}, "click_tracking": {"enable": False}}
PIXEL = re.compile(r'<img src="https://track\.example\.test/t/o/[A-Za-z0-9_-]+\.gif"')
ATTACHMENT_BYTES = bytes(range(256)) * 4 + b"\r\n\x00 trailing"


def harness_for(tmp_path, tracking=None, server=None, extra_tenants=None) -> Harness:
    tenants = {
        "acme": {
            "api_keys": ["acme-" + random_secret()],
            "tracking": NO_TRACKING if tracking is None else tracking,
        },
        **(extra_tenants or {}),
    }
    return Harness(
        tmp_path, tenants=tenants, server={"bounce_domain": BOUNCE_DOMAIN, **(server or {})}
    )


def minimal_body(**overrides) -> dict:
    body = {
        "personalizations": [{"to": [{"email": "ann@example.com"}]}],
        "from": {"email": "news@example.org"},
        "subject": "Hello",
        "content": [{"type": "text/plain", "value": "Hello there"}],
    }
    body.update(overrides)
    return body


def two_recipient_body() -> dict:
    return {
        "personalizations": [
            {
                "to": [{"email": "zoe@example.com", "name": "Zoë Ünal-Æsir"}],
                "substitutions": {"-first-": "Zoë", "-code-": "Z-100"},
                "headers": {"X-Row": "first"},
                "custom_args": {"row": "1"},
            },
            {
                "to": [{"email": "bob@example.com", "name": "Bob Stone"}],
                "subject": "Only for you, -first- ✓",
                "substitutions": {"-first-": "Bob", "-code-": "B-200"},
                "headers": {"X-Row": "second"},
            },
        ],
        "from": {"email": "news@example.org", "name": "Café Crème Newsletter"},
        "reply_to": {"email": "help@example.org", "name": "Help Desk"},
        "subject": "Grüße, -first-!",
        "content": [
            {"type": "text/plain", "value": "Hello -first-,\nyour code is -code-.\n"},
            {
                "type": "text/html",
                "value": "<html><body><p>Hello -first-, code <b>-code-</b></p></body></html>",
            },
        ],
        "headers": {"X-Campaign": "spring-2024"},
        "categories": ["newsletter"],
        "custom_args": {"batch": "7"},
    }


def auth(harness: Harness, tenant: str = "acme") -> dict[str, str]:
    return {"Authorization": f"Bearer {harness.api_key(tenant)}"}


async def post(client, harness: Harness, body, tenant: str = "acme"):
    return await client.post("/v3/mail/send", json=body, headers=auth(harness, tenant))


async def delivered_files(harness: Harness, message_id: str, count: int) -> list[bytes]:
    await harness.background_work_done()
    files = sorted((harness.config.data_dir / "outbox").glob(f"{message_id}-*.eml"))
    assert [f.name for f in files] == [f"{message_id}-{n:06d}.eml" for n in range(count)]
    return [f.read_bytes() for f in files]


def parse_wire(raw: bytes) -> email.message.EmailMessage:
    """Parse a message after checking what every MTA on the way requires of its bytes."""
    assert raw.isascii(), "an 8-bit byte would need SMTPUTF8/8BITMIME"
    assert raw.count(b"\n") == raw.count(b"\r\n"), "bare LF"
    assert raw.count(b"\r") == raw.count(b"\r\n"), "bare CR"
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    message = email.message_from_bytes(raw, policy=email.policy.default)
    for part in message.walk():
        assert not part.defects, part.defects
    return message


def raw_header_section(raw: bytes) -> bytes:
    return raw.split(b"\r\n\r\n", 1)[0]


def header_names(raw: bytes) -> list[str]:
    """Header field names, read straight from the bytes (continuation lines skipped)."""
    return [
        line.split(b":", 1)[0].decode()
        for line in raw_header_section(raw).split(b"\r\n")
        if line and line[:1] not in b" \t"
    ]


def stable_lines(raw: bytes) -> list[bytes]:
    unbounded = re.sub(rb"=_scaisend_[0-9a-f]+", b"BOUNDARY", raw)
    return [line for line in unbounded.split(b"\r\n") if not line.startswith(b"Date:")]


def assert_nothing_stored(harness: Harness) -> None:
    data_dir = harness.config.data_dir
    assert Message.select().count() == 0
    assert MessageRecipient.select().count() == 0
    outbox = data_dir / "outbox"
    assert not outbox.exists() or list(outbox.iterdir()) == []
    assert list((data_dir / "spool").glob("*")) == []
    assert harness.runtime.bus.journal.end == 0
    assert harness.runtime.bus.flush()
    assert EventRecord.select().count() == 0


def envelopes(harness: Harness, body: dict, message_id: str, tenant: str = "acme") -> list:
    service = SendService(harness.runtime)
    prepared = service.prepare(harness.config.tenants[tenant], body, message_id=message_id)
    return list(service.outgoing(prepared))


# A send that works ---------------------------------------------------------------------------


async def test_send_to_two_recipients_writes_two_well_formed_messages(tmp_path):
    harness = harness_for(tmp_path)
    body = two_recipient_body()
    async with harness.serving() as client:
        before = dt.datetime.now(dt.UTC)
        response = await post(client, harness, body)
        assert response.status_code == 202
        message_id = (await response.get_json())["message_id"]
        assert re.fullmatch(r"[0-9a-f]{32}", message_id)
        assert response.headers["X-Message-Id"] == message_id
        raws = await delivered_files(harness, message_id, 2)
        outgoing = envelopes(harness, body, message_id)
        assert harness.runtime.bus.flush()

    messages = [parse_wire(raw) for raw in raws]
    zoe, bob = messages

    # Identity and the structural headers of every copy.
    ids = [m["Message-ID"] for m in messages]
    assert all(re.fullmatch(r"<[^<>@\s]+@example\.org>", i) for i in ids)
    assert len(set(ids)) == 2
    for message in messages:
        assert message["MIME-Version"] == "1.0"
        sent = email.utils.parsedate_to_datetime(message["Date"])
        assert abs(sent - before) < dt.timedelta(minutes=2)
        assert message.get_content_type() == "multipart/alternative"
        assert [p.get_content_type() for p in message.iter_parts()] == [
            "text/plain",
            "text/html",
        ]
        assert message["X-Campaign"] == "spring-2024"
        assert str(message["From"]) == "Café Crème Newsletter <news@example.org>"
        assert str(message["Reply-To"]) == "Help Desk <help@example.org>"

    # Per personalization: recipient, subject, substitutions and headers.
    assert str(zoe["To"]) == "Zoë Ünal-Æsir <zoe@example.com>"
    assert str(bob["To"]) == "Bob Stone <bob@example.com>"
    assert str(zoe["Subject"]) == "Grüße, Zoë!"
    assert str(bob["Subject"]) == "Only for you, Bob ✓"
    assert (zoe["X-Row"], bob["X-Row"]) == ("first", "second")
    assert zoe.get_body(("plain",)).get_content() == "Hello Zoë,\r\nyour code is Z-100.\r\n"
    assert bob.get_body(("plain",)).get_content() == "Hello Bob,\r\nyour code is B-200.\r\n"
    assert zoe.get_body(("html",)).get_content() == (
        "<html><body><p>Hello Zoë, code <b>Z-100</b></p></body></html>"
    )
    assert "Hello Bob, code <b>B-200</b>" in bob.get_body(("html",)).get_content()
    assert "-first-" not in raws[0].decode() + raws[1].decode()

    # Non-ASCII headers travel as RFC 2047 encoded words.
    for raw in raws:
        head = raw_header_section(raw)
        assert b"=?utf-8?" in head
        assert "Café".encode() not in head
        assert "Grüße".encode() not in head

    # One envelope sender per copy, each a VERP address naming that copy.
    codec = VerpCodec(harness.config.signing_keys)
    assert [m.rcpt_to for m in outgoing] == ["zoe@example.com", "bob@example.com"]
    senders = [m.mail_from for m in outgoing]
    assert len(set(senders)) == 2
    for number, sender in enumerate(senders):
        local, _, domain = sender.rpartition("@")
        assert domain == BOUNCE_DOMAIN
        assert len(local) <= 64
        assert codec.parse(local) == (message_id, number)
    # These envelopes belong to the copies that were written (bar Date and boundaries).
    for message, raw in zip(outgoing, raws, strict=True):
        assert stable_lines(message.data) == stable_lines(raw)

    # What was recorded.
    stored = Message.get_by_id(message_id)
    assert stored.tenant == "acme"
    assert stored.data["categories"] == ["newsletter"]
    rows = MessageRecipient.select().where(MessageRecipient.message == message_id)
    assert sorted((r.number, r.email) for r in rows) == [
        (0, "zoe@example.com"),
        (1, "bob@example.com"),
    ]
    events = EventRecord.select().where(EventRecord.message_id == message_id)
    assert sorted((e.type, e.recipient, e.tenant) for e in events) == [
        ("delivered", "bob@example.com", "acme"),
        ("delivered", "zoe@example.com", "acme"),
        ("processed", "bob@example.com", "acme"),
        ("processed", "zoe@example.com", "acme"),
    ]
    by_recipient = {e.recipient: e.data for e in events.where(EventRecord.type == "processed")}
    assert by_recipient["zoe@example.com"]["custom_args"] == {"batch": "7", "row": "1"}
    assert by_recipient["bob@example.com"]["custom_args"] == {"batch": "7"}
    assert by_recipient["bob@example.com"]["categories"] == ["newsletter"]


@pytest.mark.parametrize(
    ("kind", "value"),
    [("text/plain", "Just text, -first-"), ("text/html", "<p>Just html, -first-</p>")],
)
async def test_a_single_body_is_a_single_part(tmp_path, kind, value):
    harness = harness_for(tmp_path)
    body = minimal_body(content=[{"type": kind, "value": value}])
    body["personalizations"][0]["substitutions"] = {"-first-": "Ann"}
    async with harness.serving() as client:
        response = await post(client, harness, body)
        assert response.status_code == 202
        (raw,) = await delivered_files(harness, (await response.get_json())["message_id"], 1)
    message = parse_wire(raw)
    assert not message.is_multipart()
    assert message.get_content_type() == kind
    assert message["Content-Transfer-Encoding"] == "quoted-printable"
    assert message.get_content() == value.replace("-first-", "Ann")


async def test_attachments_are_mixed_parts_that_decode_to_the_original_bytes(tmp_path):
    harness = harness_for(tmp_path)
    body = two_recipient_body()
    body["attachments"] = [
        {
            "content": base64.b64encode(ATTACHMENT_BYTES).decode(),
            "filename": "Prüfbericht März.pdf",
            "type": "application/pdf",
        },
        {"content": base64.b64encode(b"a,b\r\n1,2\r\n").decode(), "filename": "data.csv"},
    ]
    async with harness.serving() as client:
        response = await post(client, harness, body)
        assert response.status_code == 202
        raws = await delivered_files(harness, (await response.get_json())["message_id"], 2)
    for raw in raws:
        message = parse_wire(raw)
        assert message.get_content_type() == "multipart/mixed"
        alternative, pdf, csv = message.iter_parts()
        assert alternative.get_content_type() == "multipart/alternative"
        assert pdf.get_content_type() == "application/pdf"
        assert pdf.get_filename() == "Prüfbericht März.pdf"
        assert pdf.get_content_disposition() == "attachment"
        assert pdf["Content-Transfer-Encoding"] == "base64"
        assert pdf.get_payload(decode=True) == ATTACHMENT_BYTES
        assert csv.get_content_type() == "application/octet-stream"
        assert (csv.get_filename(), csv.get_payload(decode=True)) == ("data.csv", b"a,b\r\n1,2\r\n")
        assert message.get_body(("plain",)).get_content().startswith("Hello ")


@pytest.mark.parametrize(
    "filename",
    [pytest.param("報告書" * 40 + ".pdf", id="cjk"), pytest.param("ü" * 251 + ".txt", id="latin")],
)
async def test_a_long_non_ascii_filename_stays_within_998_bytes_a_line(tmp_path, filename):
    harness = harness_for(tmp_path)
    body = minimal_body(attachments=[{"content": "aGk=", "filename": filename}])
    async with harness.serving() as client:
        response = await post(client, harness, body)
        assert response.status_code == 202
        (raw,) = await delivered_files(harness, (await response.get_json())["message_id"], 1)
    _, attachment = parse_wire(raw).iter_parts()
    assert attachment.get_filename() == filename
    assert attachment.get_payload(decode=True) == b"hi"


async def test_the_longest_accepted_display_names_stay_within_998_bytes_a_line(tmp_path):
    harness = harness_for(tmp_path)
    sender, recipient = "\U0001f600" * 256, ("Zoë " * 64)[:256]
    body = minimal_body(**{"from": {"email": "news@example.org", "name": sender}})
    body["personalizations"][0]["to"][0]["name"] = recipient
    async with harness.serving() as client:
        response = await post(client, harness, body)
        assert response.status_code == 202
        (raw,) = await delivered_files(harness, (await response.get_json())["message_id"], 1)
    message = parse_wire(raw)
    assert message["From"].addresses[0].addr_spec == "news@example.org"
    assert rfc2047_address(raw, "From") == (sender, "news@example.org")
    assert rfc2047_address(raw, "To") == (recipient.strip(), "ann@example.com")


def rfc2047_address(raw: bytes, name: str) -> tuple[str, str]:
    """One address header as RFC 2047 reads it: blanks between adjacent encoded words are not
    part of the name (``email``'s address parser keeps them, so it cannot check a folded one)."""
    match = re.search(rb"\r\n" + name.encode() + rb": (.*?)\r\n(?![ \t])", b"\r\n" + raw, re.S)
    assert match is not None
    value = re.sub(r"\r\n(?=[ \t])", "", match.group(1).decode("ascii"))
    return email.utils.parseaddr(str(email.header.make_header(email.header.decode_header(value))))


async def test_bcc_recipients_get_a_copy_without_being_named_in_any(tmp_path):
    harness = harness_for(tmp_path)
    body = minimal_body()
    body["personalizations"][0]["cc"] = [{"email": "carol@example.com"}]
    body["personalizations"][0]["bcc"] = [{"email": "secret@example.com"}]
    async with harness.serving() as client:
        response = await post(client, harness, body)
        assert response.status_code == 202
        message_id = (await response.get_json())["message_id"]
        raws = await delivered_files(harness, message_id, 3)
        outgoing = envelopes(harness, body, message_id)
    assert [m.rcpt_to for m in outgoing] == [
        "ann@example.com",
        "carol@example.com",
        "secret@example.com",
    ]
    for raw in raws:
        message = parse_wire(raw)
        assert str(message["To"]) == "ann@example.com"
        assert str(message["Cc"]) == "carol@example.com"
        assert "Bcc" not in message
        assert b"secret@example.com" not in raw


async def test_personalization_subject_substitution_with_a_line_break_cannot_add_a_header(
    tmp_path,
):
    harness = harness_for(tmp_path)
    body = minimal_body(subject="Hello -name-")
    body["personalizations"][0]["substitutions"] = {"-name-": "Ann\r\nBcc: spy@evil.test"}
    async with harness.serving() as client:
        response = await post(client, harness, body)
        if response.status_code == 400:
            errors = (await response.get_json())["errors"]
            assert any("substitutions" in (e["field"] or "") for e in errors)
            assert_nothing_stored(harness)
            return
        assert response.status_code == 202
        (raw,) = await delivered_files(harness, (await response.get_json())["message_id"], 1)
    assert "Bcc" not in header_names(raw)
    assert parse_wire(raw)["Bcc"] is None


async def test_an_internationalised_sender_domain_keeps_the_headers_ascii(tmp_path):
    harness = harness_for(tmp_path)
    body = minimal_body(**{"from": {"email": "news@bücher.example"}})
    async with harness.serving() as client:
        response = await post(client, harness, body)
        assert response.status_code == 202
        (raw,) = await delivered_files(harness, (await response.get_json())["message_id"], 1)
    assert b"From: news@xn--bcher-kva.example\r\n" in raw
    message = parse_wire(raw)
    assert message["Message-ID"].endswith("@xn--bcher-kva.example>")


@pytest.mark.parametrize("where", ["header", "subject"])
async def test_the_longest_accepted_header_values_stay_within_998_bytes_a_line(tmp_path, where):
    harness = harness_for(tmp_path)
    value = "x" * 998
    body = minimal_body(**({"headers": {"X-Long": value}} if where == "header" else {}))
    if where == "subject":
        body["subject"] = value
    async with harness.serving() as client:
        response = await post(client, harness, body)
        assert response.status_code == 202
        (raw,) = await delivered_files(harness, (await response.get_json())["message_id"], 1)
    message = parse_wire(raw)
    assert str(message["X-Long" if where == "header" else "Subject"]) == value


# Bad input -----------------------------------------------------------------------------------


def _without(key: str):
    def change(body):
        del body[key]

    return change


def _set(path: str, value):
    def change(body):
        *parents, last = path.split(".")
        target = body
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        target[int(last) if last.isdigit() else last] = value

    return change


BAD_BODIES = [
    pytest.param(_without("from"), "from", id="missing-from"),
    pytest.param(_without("personalizations"), "personalizations", id="missing-personalizations"),
    pytest.param(_without("content"), "content", id="missing-content"),
    pytest.param(_set("personalizations", []), "personalizations", id="empty-personalizations"),
    pytest.param(_set("personalizations", {"to": []}), "personalizations", id="wrong-type-list"),
    pytest.param(_set("subject", 42), "subject", id="wrong-type-subject"),
    pytest.param(
        _set("personalizations.0.to", "a@example.com"), "personalizations.0.to", id="wrong-type-to"
    ),
    pytest.param(_set("content.0.value", ["x"]), "content.0.value", id="wrong-type-content"),
    pytest.param(_set("content.0.type", "text/markdown"), "content.0.type", id="content-type"),
    pytest.param(_set("content.0.value", ""), "content.0.value", id="empty-content"),
    pytest.param(_set("from", {"email": "not-an-address"}), "from.email", id="bad-from"),
    pytest.param(
        _set("personalizations.0.to", [{"email": "ann@@example.com"}]),
        "personalizations.0.to.0.email",
        id="bad-to",
    ),
    pytest.param(
        _set("personalizations.0.to", [{"email": "Ann <ann@example.com>"}]),
        "personalizations.0.to.0.email",
        id="to-with-display-name",
    ),
    pytest.param(_set("subject", "Hi\r\nBcc: spy@evil.test"), "subject", id="crlf-subject"),
    pytest.param(_set("subject", "Hi\nBcc: spy@evil.test"), "subject", id="lf-subject"),
    pytest.param(
        _set("personalizations.0.subject", "Hi\rthere"),
        "personalizations.0.subject",
        id="cr-personalization-subject",
    ),
    pytest.param(
        _set("headers", {"X-Note": "a\r\nBcc: spy@evil.test"}), "headers.X-Note", id="crlf-header"
    ),
    pytest.param(
        _set("from", {"email": "news@example.org", "name": "News\r\nBcc: spy@evil.test"}),
        "from.name",
        id="crlf-display-name",
    ),
    pytest.param(_set("headers", {"Bcc": "spy@evil.test"}), "headers.Bcc", id="reserved-bcc"),
    pytest.param(
        _set("headers", {"message-id": "<x@evil.test>"}), "headers.message-id", id="reserved-lower"
    ),
    pytest.param(
        _set("personalizations.0.headers", {"From": "ceo@example.org"}),
        "personalizations.0.headers.From",
        id="reserved-in-personalization",
    ),
    pytest.param(
        _set("attachments", [{"content": "not base64!", "filename": "a.txt"}]),
        "attachments.0.content",
        id="bad-base64",
    ),
    pytest.param(
        _set("attachments", [{"content": "aGVsbG8", "filename": "a.txt"}]),
        "attachments.0.content",
        id="unpadded-base64",
    ),
    pytest.param(
        _set(
            "attachments",
            [{"content": "aGk=", "filename": "logo.png", "disposition": "inline"}],
        ),
        "attachments.0.content_id",
        id="inline-without-cid",
    ),
    pytest.param(_set("sender", {"email": "a@example.org"}), "sender", id="unknown-key"),
    pytest.param(
        _set("personalizations.0.unsubscribe", True),
        "personalizations.0.unsubscribe",
        id="unknown-nested-key",
    ),
    pytest.param(
        _set("personalizations.0.cc", [{"email": "ANN@example.com"}]),
        "personalizations.0.cc.0.email",
        id="duplicate-recipient",
    ),
    pytest.param(
        _set(
            "personalizations",
            [{"to": [{"email": "ann@example.com"}]}, {"to": [{"email": "ann@example.com"}]}],
        ),
        "personalizations.1.to.0.email",
        id="duplicate-across-personalizations",
    ),
    pytest.param(_without("subject"), "personalizations.0.subject", id="no-subject-anywhere"),
    pytest.param(
        _set(
            "content", [{"type": "text/plain", "value": "a"}, {"type": "text/plain", "value": "b"}]
        ),
        "content",
        id="content-type-twice",
    ),
    pytest.param(
        _set("tracking_settings", {"open_tracking": {"enable": "yes"}}),
        "tracking_settings.open_tracking.enable",
        id="tracking-not-boolean",
    ),
    pytest.param(
        _set("mail_settings", {"sandbox_mode": {"enable": "yes"}}),
        "mail_settings.sandbox_mode.enable",
        id="mail-setting-not-boolean",
    ),
    pytest.param(_set("asm", {"group_id": 0}), "asm.group_id", id="asm-group-zero"),
    pytest.param(_set("asm", {"group_id": 10**20}), "asm.group_id", id="asm-group-huge"),
    pytest.param(
        _set("asm", {"group_id": 1, "groups_to_display": [2_000_000_001]}),
        "asm.groups_to_display.0",
        id="asm-display-group-beyond-any-id",
    ),
]


# A line break at the very end passes the schema's patterns (Python's ``$`` also matches
# before a final newline), and each of these then breaks the header it lands in.
def trailing_newline(change, field, name):
    return pytest.param(change, field, id=f"trailing-lf-{name}")


BAD_BODIES += [
    trailing_newline(_set("subject", "Hello\n"), "subject", "subject"),
    trailing_newline(_set("headers", {"X-Note": "a\n"}), "headers.X-Note", "header"),
    trailing_newline(_set("headers", {"X-Note\n": "a"}), "headers", "header-name"),
    trailing_newline(_set("from", {"email": "news@example.org\n"}), "from.email", "from"),
    trailing_newline(
        _set("personalizations.0.to", [{"email": "ann@example.com\n"}]),
        "personalizations.0.to.0.email",
        "to",
    ),
    trailing_newline(
        _set("from", {"email": "news@example.org", "name": "News\n"}), "from.name", "name"
    ),
    trailing_newline(
        _set("attachments", [{"content": "aGk=", "filename": "a.txt\n"}]),
        "attachments.0.filename",
        "filename",
    ),
]


@pytest.mark.parametrize(("change", "field"), BAD_BODIES)
async def test_a_bad_body_is_400_naming_the_field_and_nothing_is_stored(tmp_path, change, field):
    harness = harness_for(tmp_path)
    body = copy.deepcopy(minimal_body())
    change(body)
    async with harness.serving() as client:
        response = await post(client, harness, body)
        assert response.status_code == 400
        errors = (await response.get_json())["errors"]
        assert errors
        assert all(set(e) == {"field", "message"} and e["message"] for e in errors)
        fields = [e["field"] for e in errors]
        assert field in fields or (
            field == "headers" and any(f.startswith("headers") for f in fields)
        )
        await harness.background_work_done()
        assert_nothing_stored(harness)


@pytest.mark.parametrize(
    ("data", "says"),
    [
        pytest.param(b'{"subject": "caf\xe9"}', "UTF-8", id="not-utf8"),
        pytest.param(b'{"personalizations": [', "JSON", id="invalid-json"),
        pytest.param(b"", "JSON", id="empty"),
        pytest.param(json.dumps([minimal_body()]).encode(), "object", id="array"),
        pytest.param(b'"just a string"', "object", id="string"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, "nested", id="nested-too-deeply"),
    ],
)
async def test_a_body_that_is_not_a_json_object_is_400(tmp_path, data, says):
    harness = harness_for(tmp_path)
    async with harness.serving() as client:
        response = await client.post(
            "/v3/mail/send",
            data=data,
            headers={**auth(harness), "Content-Type": "application/json"},
        )
        assert response.status_code == 400
        (error,) = (await response.get_json())["errors"]
        assert error["field"] is None
        assert says in error["message"]
        await harness.background_work_done()
        assert_nothing_stored(harness)


async def test_every_problem_is_listed_at_once(tmp_path):
    harness = harness_for(tmp_path)
    body = {"from": {"email": "nope"}, "headers": {"Bcc": "x@example.com"}}
    async with harness.serving() as client:
        response = await post(client, harness, body)
        assert response.status_code == 400
        fields = {e["field"] for e in (await response.get_json())["errors"]}
    assert {"personalizations", "content", "from.email"} <= fields


async def test_an_oversized_body_is_413_and_nothing_is_stored(tmp_path):
    harness = harness_for(tmp_path, server={"http": {"max_body_bytes": 4096}})
    async with harness.serving() as client:
        small = await post(client, harness, minimal_body())
        assert small.status_code == 202
        await harness.background_work_done()
        assert Message.select().count() == 1

        big = minimal_body(content=[{"type": "text/plain", "value": "x" * 5000}])
        response = await post(client, harness, big)
        assert response.status_code == 413
        (error,) = (await response.get_json())["errors"]
        assert "4096" in error["message"]
        await harness.background_work_done()
        assert Message.select().count() == 1
        assert len(list((harness.config.data_dir / "outbox").glob("*.eml"))) == 1


# Authentication ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(None, id="none"),
        pytest.param("", id="empty"),
        pytest.param("Basic YWNtZTpzZWNyZXQ=", id="basic"),
        pytest.param("Bearer", id="bearer-without-key"),
        pytest.param("Bearer wrong-key", id="wrong-key"),
        pytest.param("KEY", id="key-without-scheme"),
    ],
)
async def test_a_send_without_a_valid_api_key_is_401(tmp_path, authorization):
    harness = harness_for(tmp_path)
    headers = {} if authorization is None else {"Authorization": authorization}
    if authorization == "KEY":
        headers = {"Authorization": harness.api_key("acme")}
    async with harness.serving() as client:
        # An invalid body too: an unauthenticated caller learns nothing about validation.
        for body in (minimal_body(), {"nonsense": True}):
            response = await client.post("/v3/mail/send", json=body, headers=headers)
            assert response.status_code == 401
            (error,) = (await response.get_json())["errors"]
            assert error["message"]
        await harness.background_work_done()
        assert_nothing_stored(harness)


async def test_another_tenants_key_sends_as_that_tenant(tmp_path):
    harness = harness_for(
        tmp_path, extra_tenants={"beta": {"api_keys": ["beta-" + random_secret()]}}
    )
    async with harness.serving() as client:
        first = await post(client, harness, minimal_body(), tenant="acme")
        second = await post(client, harness, minimal_body(), tenant="beta")
        assert (first.status_code, second.status_code) == (202, 202)
        ids = [(await r.get_json())["message_id"] for r in (first, second)]
        await harness.background_work_done()
        assert harness.runtime.bus.flush()
    assert [Message.get_by_id(i).tenant for i in ids] == ["acme", "beta"]
    tenants = {
        (e.message_id, e.tenant)
        for e in EventRecord.select().where(EventRecord.type == "processed")
    }
    assert tenants == {(ids[0], "acme"), (ids[1], "beta")}


async def test_the_scheme_is_case_insensitive(tmp_path):
    harness = harness_for(tmp_path)
    async with harness.serving() as client:
        response = await client.post(
            "/v3/mail/send",
            json=minimal_body(),
            headers={"Authorization": f"bearer {harness.api_key('acme')}"},
        )
        assert response.status_code == 202
        await harness.background_work_done()


# Tracking and mail settings ------------------------------------------------------------------

HTML_BODY = [{"type": "text/html", "value": "<html><body><p>Hi</p></body></html>"}]


async def _html_of_a_send(harness: Harness, client, **overrides) -> str:
    response = await post(client, harness, minimal_body(content=HTML_BODY, **overrides))
    assert response.status_code == 202
    (raw,) = await delivered_files(harness, (await response.get_json())["message_id"], 1)
    return parse_wire(raw).get_content()


async def test_open_tracking_follows_the_request_over_the_tenant_default(tmp_path):
    tracking_on = harness_for(tmp_path / "on", tracking={})
    async with tracking_on.serving() as client:
        assert PIXEL.search(await _html_of_a_send(tracking_on, client))
        html = await _html_of_a_send(
            tracking_on, client, tracking_settings={"open_tracking": {"enable": False}}
        )
        assert html == "<html><body><p>Hi</p></body></html>"

    tracking_off = harness_for(tmp_path / "off", tracking={"open_tracking": {"enable": False}})
    async with tracking_off.serving() as client:
        html = await _html_of_a_send(tracking_off, client)
        assert html == "<html><body><p>Hi</p></body></html>"
        html = await _html_of_a_send(
            tracking_off, client, tracking_settings={"open_tracking": {"enable": True}}
        )
        assert PIXEL.search(html)
        assert html.index("<img") < html.index("</body>")


async def test_sandbox_mode_validates_but_stores_and_sends_nothing(tmp_path):
    harness = harness_for(tmp_path)
    sandbox = {"sandbox_mode": {"enable": True}}
    async with harness.serving() as client:
        response = await post(client, harness, minimal_body(mail_settings=sandbox))
        assert response.status_code == 200
        assert "X-Message-Id" not in response.headers
        await harness.background_work_done()
        assert_nothing_stored(harness)

        invalid = minimal_body(mail_settings=sandbox)
        del invalid["from"]
        response = await post(client, harness, invalid)
        assert response.status_code == 400
        assert [e["field"] for e in (await response.get_json())["errors"]] == ["from"]
