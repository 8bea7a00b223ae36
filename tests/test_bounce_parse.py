"""Bounce and complaint parsing against real messages from ../shared/corpus/bounces.

Expected values come from the corpus's expected.jsonl, read at run time; nothing is copied here.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import defaultdict
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from plugins.inbound_dsn.commands import parse_bounce
from plugins.inbound_dsn.parse import parse_message, parse_path
from plugins.inbound_dsn.reasons import PHRASES, REASONS, classify
from plugins.inbound_dsn.report import Report
from plugins.inbound_dsn.text import addresses_in, find_status, replied_status

BOUNCES = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "bounces"
MAILDIR = BOUNCES / "corpus"


@cache
def expected() -> dict[str, list[dict[str, Any]]]:
    by_file: dict[str, list[dict[str, Any]]] = defaultdict(list)
    with (BOUNCES / "expected.jsonl").open() as handle:
        for line in handle:
            row = json.loads(line)
            by_file[row["file"]].append(row)
    return dict(by_file)


def names(row: dict[str, Any]) -> set[str]:
    return {a.lower() for a in [row["recipient"], *(row.get("recipient_alternates") or [])] if a}


def found(row: dict[str, Any], items: list[dict[str, Any]]) -> dict[str, Any] | None:
    wanted = names(row)
    return next((item for item in items if item["recipient"] in wanted), None)


def test_the_corpus_is_there() -> None:
    assert len(expected()) >= 500, f"expected the bounce corpus at {BOUNCES}"


# One or more messages per format: standard DSNs, the plain-text notices of the common MTAs,
# provider formats, Amazon SES JSON, ARF and vendor complaints.
FORMATS = [
    "maildir/bsd/lhost-postfix-04.eml",
    "maildir/bsd/lhost-postfix-05.eml",
    "maildir/bsd/lhost-exim-02.eml",
    "maildir/bsd/lhost-exim-05.eml",
    "maildir/bsd/lhost-sendmail-01.eml",
    "maildir/bsd/lhost-sendmail-03.eml",
    "maildir/bsd/lhost-qmail-03.eml",
    "maildir/bsd/lhost-qmail-07.eml",
    "maildir/bsd/lhost-office365-01.eml",
    "maildir/bsd/lhost-exchange2003-01.eml",
    "maildir/bsd/lhost-exchange2007-03.eml",
    "maildir/bsd/lhost-gmail-03.eml",
    "maildir/bsd/lhost-yahoo-01.eml",
    "maildir/bsd/lhost-outlook-01.eml",
    "maildir/bsd/lhost-amazonses-07.eml",
    "maildir/bsd/lhost-amazonses-10.eml",
    "maildir/bsd/lhost-opensmtpd-01.eml",
    "maildir/bsd/lhost-dragonfly-01.eml",
    "maildir/bsd/lhost-courier-01.eml",
    "maildir/bsd/lhost-mailru-03.eml",
    "maildir/bsd/rhost-google-03.eml",
    "maildir/bsd/rhost-microsoft-02.eml",
    "maildir/bsd/rhost-aol-01.eml",
    "maildir/bsd/rfc3464-03.eml",
    "maildir/bsd/arf-01.eml",
    "maildir/bsd/arf-16.eml",
    "maildir/bsd/arf-26.eml",
    "maildir/dos/lhost-postfix-01.eml",
    "maildir/mac/lhost-postfix-01.eml",
    "maildir/dos/arf-01.eml",
    "maildir/mac/lhost-sendmail-01.eml",
]


@pytest.mark.parametrize("name", FORMATS)
def test_format_yields_the_expected_recipients_codes_and_reasons(name: str) -> None:
    items = parse_path(str(MAILDIR / name))
    for row in expected()[name]:
        item = found(row, items)
        assert item is not None, f"{row['recipient']} not found in {items}"
        if row["status"] and not row["status_is_pseudo"]:
            assert item["status"] == row["status"]
        assert item["reason"] == row["reason"]
        assert item["hardbounce"] == row["hardbounce"]
        if row["is_arf"]:
            assert item["feedback_type"] == row["feedback_type"]


def test_a_dsn_reports_reply_code_diagnostic_and_the_original_message_id() -> None:
    name = "maildir/bsd/lhost-postfix-04.eml"
    report = parse_message((MAILDIR / name).read_bytes())
    row = expected()[name][0]
    assert report.kind == "bounce"
    assert report.original_message_id == row["original_message_id"]
    item = report.recipients[0]
    assert item.reply_code == row["replycode"]
    assert item.diagnostic


def test_the_original_message_id_is_recovered_for_attribution() -> None:
    reports = [
        (parse_message((MAILDIR / name).read_bytes()), rows[0]["original_message_id"])
        for name, rows in expected().items()
        if rows[0]["original_message_id"] and rows[0]["kind"] in ("bounce", "feedback")
    ]
    recovered = sum(
        report.original_message_id is not None
        and report.original_message_id.strip("<>") == wanted.strip("<>")
        for report, wanted in reports
    )
    assert len(reports) >= 400
    assert recovered / len(reports) >= 0.97


@pytest.mark.parametrize("name", ["maildir/bsd/rfc3834-02.eml", "maildir/bsd/rfc3834-03.eml"])
def test_auto_replies_are_recognised_and_yield_nothing(name: str) -> None:
    assert parse_message((MAILDIR / name).read_bytes()).kind == "vacation"
    assert parse_path(str(MAILDIR / name)) == []


def test_delivery_reports_are_recognised_and_yield_nothing() -> None:
    name = "maildir/bsd/rfc3464-28.eml"
    assert parse_message((MAILDIR / name).read_bytes()).kind == "delivered"
    assert parse_path(str(MAILDIR / name)) == []


@pytest.mark.parametrize("path", sorted((MAILDIR / "maildir" / "not").glob("*.eml")))
def test_messages_that_are_no_reports_yield_nothing(path: Path) -> None:
    assert parse_path(str(path)) == []


def test_every_reason_is_in_the_documented_taxonomy() -> None:
    seen = {item["reason"] for path in MAILDIR.rglob("*.eml") for item in parse_path(str(path))}
    assert seen <= set(REASONS)


def score() -> dict[str, float]:
    """Recall, real-status and reason accuracy, ARF recall and false positives, the way the
    corpus's scorer counts them, over the bounce and complaint messages."""
    hits = total = status_ok = status_n = reason_ok = reason_n = 0
    arf_files = arf_hits = false_positives = 0
    for name, rows in expected().items():
        items = parse_path(str(MAILDIR / name))
        kind = rows[0]["kind"]
        if kind == "not_bounce":
            false_positives += bool(items)
            continue
        if kind not in ("bounce", "feedback"):
            continue
        if any(row["is_arf"] for row in rows):
            arf_files += 1
            arf_hits += any(i["reason"] == "feedback" for i in items)
        for row in rows:
            if not row["recipient"]:
                continue
            item = found(row, items)
            total += 1
            hits += item is not None
            if row["status"] and not row["status_is_pseudo"]:
                status_n += 1
                status_ok += item is not None and item["status"] == row["status"]
            if row["reason"]:
                reason_n += 1
                reason_ok += item is not None and item["reason"] == row["reason"]
    return {
        "recall": hits / total,
        "status": status_ok / status_n,
        "reason": reason_ok / reason_n,
        "arf": arf_hits / arf_files,
        "false_positives": false_positives,
    }


def test_corpus_wide_metrics_hold_their_floors() -> None:
    metrics = score()
    assert metrics["recall"] >= 0.97
    assert metrics["status"] >= 0.95
    assert metrics["reason"] >= 0.85
    assert metrics["arf"] >= 0.95
    assert metrics["false_positives"] == 0


@pytest.mark.parametrize("ending", [b"\r\n", b"\r"])
def test_crlf_and_cr_only_copies_parse_like_the_lf_original(ending: bytes) -> None:
    for name in ("lhost-postfix-04.eml", "lhost-exim-05.eml", "lhost-qmail-03.eml", "arf-16.eml"):
        raw = (MAILDIR / "maildir" / "bsd" / name).read_bytes()
        converted = raw.replace(b"\r\n", b"\n").replace(b"\n", ending)
        assert parse_message(converted) == parse_message(raw)


def test_the_command_prints_the_json_list(tmp_path: Path) -> None:
    name = "maildir/bsd/lhost-postfix-04.eml"
    scaisend = Path(sys.executable).with_name("scaisend")
    done = subprocess.run(
        [str(scaisend), "parse-bounce", str(MAILDIR / name)],
        capture_output=True,
        check=True,
        timeout=120,
    )
    assert json.loads(done.stdout) == parse_path(str(MAILDIR / name))
    junk = tmp_path / "junk.eml"
    junk.write_bytes(b"\x00\xff not a message")
    result = CliRunner().invoke(parse_bounce, [str(junk)])
    assert result.exit_code == 0
    assert json.loads(result.output) == []


def parsed_without_fallback(raw: bytes) -> Report:
    """The report, checking the parser got there by its rules, not by its last-resort catch."""
    with capture_logs() as logs:
        report = parse_message(raw)
    assert not [entry for entry in logs if entry["event"] == "inbound_dsn.unparseable"]
    return report


SAMPLES = [
    (MAILDIR / "maildir" / "bsd" / n).read_bytes()
    for n in ("lhost-postfix-04.eml", "lhost-exim-05.eml", "arf-16.eml", "lhost-amazonses-10.eml")
]


@given(st.binary(max_size=4000))
@settings(max_examples=300, deadline=None)
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    report = parsed_without_fallback(raw)
    assert report.kind in ("bounce", "feedback", "vacation", "delivered", "not_bounce")
    assert all(item.reason in REASONS for item in report.recipients)


@given(
    st.sampled_from(SAMPLES),
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=20000), st.binary(min_size=0, max_size=40)),
        min_size=1,
        max_size=6,
    ),
)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_mangled_reports_never_raise(sample: bytes, edits: list[tuple[int, bytes]]) -> None:
    raw = sample
    for offset, chunk in edits:
        at = offset % (len(raw) + 1)
        raw = raw[:at] + chunk + raw[at + len(chunk) // 2 :]
    report = parsed_without_fallback(raw)
    assert all(item.reason in REASONS for item in report.recipients)
    json.dumps([item.to_json(report) for item in report.recipients])


MANGLED_HEADERS = st.sampled_from(
    [
        b'Content-Type: multipart/report; report-type=delivery-status; boundary=""\n',
        b'Content-Type: multipart/report; boundary="x"\n',
        b"Content-Type: message/delivery-status\nContent-Transfer-Encoding: base64\n",
        b'Content-Type: message/feedback-report; charset="\xff\xfe"\n',
        b"Subject: =?utf-8?b?====?= =?x-unknown?q?abc?=\n",
        b"Content-Type: text/plain; charset=no-such-charset\n",
    ]
)


@given(MANGLED_HEADERS, st.binary(max_size=2000))
@settings(max_examples=200, deadline=None)
def test_broken_mime_headers_never_raise(header: bytes, body: bytes) -> None:
    raw = b"From: MAILER-DAEMON@example.org\n" + header + b"\n" + body
    report = parsed_without_fallback(raw)
    assert report.kind in ("bounce", "feedback", "vacation", "delivered", "not_bounce")


PHRASE_WORDS = sorted(
    {
        word
        for _, phrases in PHRASES
        for word in re.findall(r"[a-z0-9]+|[^a-z0-9\s]", phrases.pattern.pattern)
        if not word.startswith("(")
    }
)


@given(st.lists(st.sampled_from([*PHRASE_WORDS, " ", " ", "\n", ".", "-"]), max_size=40))
@settings(max_examples=500, deadline=None)
def test_the_literal_gate_never_hides_a_phrase_match(words: list[str]) -> None:
    text = "".join(w if w in (" ", "\n") else w + " " for w in words)
    for _, phrases in PHRASES:
        assert phrases.search(text) == (phrases.pattern.search(text) is not None)


CODES = st.tuples(
    st.sampled_from("245"), st.integers(min_value=0, max_value=999), st.integers(0, 999)
).map(lambda c: f"{c[0]}.{c[1]}.{c[2]}")
FILLER = st.text(alphabet=st.sampled_from("abc xyz:;()<>,\n"), max_size=30)


@given(FILLER, CODES, FILLER)
@settings(max_examples=300, deadline=None)
def test_a_status_code_in_prose_is_found(before: str, code: str, after: str) -> None:
    assert find_status(f"{before} 550 {code} {after}") == code
    assert replied_status(f"{before} 550 {code} {after}") == code


@given(st.integers(0, 255), st.integers(0, 255), st.integers(0, 255), FILLER)
@settings(max_examples=200, deadline=None)
def test_dotted_ip_addresses_are_no_status_codes(a: int, b: int, c: int, text: str) -> None:
    assert find_status(f"{text} host 5.{a}.{b}.{c} said {text}") is None


LOCAL = st.from_regex(r"[a-z0-9][a-z0-9_+-]{0,12}(\.[a-z0-9_+-]{1,8})?", fullmatch=True)
DOMAIN = st.from_regex(r"[a-z0-9]{1,10}(-[a-z0-9]{1,5})?\.[a-z]{2,6}", fullmatch=True)


@given(LOCAL, DOMAIN, FILLER, FILLER)
@settings(max_examples=300, deadline=None)
def test_an_address_in_prose_is_found_whole(
    local: str, domain: str, before: str, after: str
) -> None:
    address = f"{local}@{domain}"
    assert address in addresses_in(f"{before} <{address}>: {after}")
    assert address in addresses_in(f"{before}\n  {address.upper()}\n{after}")


def test_a_newsletter_from_a_no_reply_address_is_no_bounce() -> None:
    raw = (
        b"From: Example News <no-reply@news.example.com>\r\n"
        b"To: reader@example.org\r\n"
        b"Subject: This week at Example\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
        b"Hello reader@example.org,\r\n\r\nOur new shop opens on Monday. Write to\r\n"
        b"  sales@example.com\r\nfor an appointment.\r\n"
    )
    report = parsed_without_fallback(raw)
    assert report.kind == "not_bounce"
    assert report.recipients == ()


def test_a_plain_text_notice_without_a_dsn_part_is_read() -> None:
    raw = (
        b"From: MAILER-DAEMON@mx.example.net\r\n"
        b"To: sender@example.com\r\n"
        b"Subject: failure notice\r\n\r\n"
        b"I wasn't able to deliver your message to the following addresses.\r\n\r\n"
        b"<gone@example.net>:\r\n"
        b"192.0.2.1 does not like recipient.\r\n"
        b"Remote host said: 550 5.1.1 <gone@example.net>... User unknown\r\n\r\n"
        b"--- Below this line is a copy of the message.\r\n\r\n"
        b"From: sender@example.com\r\nTo: gone@example.net\r\n"
        b"Message-ID: <abc.123@example.com>\r\n\r\nhello\r\n"
    )
    report = parsed_without_fallback(raw)
    assert report.kind == "bounce"
    assert report.original_message_id == "abc.123@example.com"
    [item] = report.recipients
    assert (item.recipient, item.status, item.reply_code, item.reason, item.hard) == (
        "gone@example.net",
        "5.1.1",
        "550",
        "userunknown",
        True,
    )


def test_a_report_flattened_to_plain_text_is_still_a_complaint() -> None:
    raw = (MAILDIR / "maildir" / "bsd" / "arf-16.eml").read_bytes()
    flattened = raw.replace(b"Content-Type: message/feedback-report", b"Content-Type: text/plain")
    assert flattened != raw
    report = parsed_without_fallback(flattened)
    assert report.kind == "feedback"
    assert [i.recipient for i in report.recipients] == [
        i.recipient for i in parse_message(raw).recipients
    ]
    assert {i.feedback_type for i in report.recipients} == {"abuse"}


@pytest.mark.parametrize(
    ("diagnostic", "status", "reason"),
    [
        ("550 5.1.1 Benutzer unbekannt", "5.1.1", "userunknown"),
        ("550 5.1.1 Utilisateur inconnu", "5.1.1", "userunknown"),
        ("宛先のユーザが存在しません", "5.1.1", "userunknown"),
        ("552 5.2.2 Postfach voll", "5.2.2", "mailboxfull"),
        ("452 4.2.2 Boîte aux lettres pleine", "4.2.2", "mailboxfull"),
        ("552 buzón lleno", None, "mailboxfull"),
        ("554 5.7.1 Client host [192.0.2.1] blocked using zen.spamhaus.org", "5.7.1", "blocked"),
        ("550 5.7.1 Message rejected as spam by Content Filtering", "5.7.1", "spamdetected"),
        ("550 5.7.26 Unauthenticated email is not accepted", "5.7.26", "authfailure"),
        ("554 5.4.7 delivery expired (message too old)", "5.4.7", "expired"),
        ("Host or domain name not found. Name service error", "5.4.4", "hostunknown"),
    ],
)
def test_reasons_read_from_the_wording(diagnostic: str, status: str | None, reason: str) -> None:
    assert classify(diagnostic, status, action="failed") == reason


def test_a_report_listing_deliveries_too_is_about_its_failures_only() -> None:
    raw = (
        b"From: MAILER-DAEMON@mx.example.net\r\n"
        b"To: sender@example.com\r\n"
        b"Subject: Delivery Status Notification\r\n"
        b"MIME-Version: 1.0\r\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nSome deliveries failed.\r\n"
        b"--b\r\nContent-Type: message/delivery-status\r\n\r\n"
        b"Reporting-MTA: dns; mx.example.net\r\n\r\n"
        b"Final-Recipient: rfc822; fine@example.org\r\nAction: delivered\r\nStatus: 2.0.0\r\n\r\n"
        b"Final-Recipient: rfc822; full@example.org\r\nAction: failed\r\nStatus: 5.2.2\r\n"
        b"Diagnostic-Code: smtp; 552 5.2.2 Mailbox full\r\n"
        b"--b--\r\n"
    )
    report = parsed_without_fallback(raw)
    assert report.kind == "bounce"
    assert report.reporting_mta == "mx.example.net"
    assert [(i.recipient, i.reason, i.status, i.reply_code) for i in report.recipients] == [
        ("full@example.org", "mailboxfull", "5.2.2", "552")
    ]


def test_a_shop_mail_about_a_failed_payment_is_no_bounce() -> None:
    raw = (
        b"From: Example Shop <orders@shop.example.com>\r\n"
        b"To: buyer@example.org\r\n"
        b"Subject: Payment failed for order 1234\r\n\r\n"
        b"Your payment failed. Contact billing@shop.example.com or reply to this message.\r\n"
    )
    assert parsed_without_fallback(raw).kind == "not_bounce"
