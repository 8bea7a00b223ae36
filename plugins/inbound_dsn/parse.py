"""Parse an inbound message into a :class:`Report`: DSNs, vendor bounces, complaints, auto-replies.

Complaints first (ARF and vendor formats, :mod:`.arf`), then vendor notices that are data
(:mod:`.vendors`), then delivery-status fields (:mod:`.dsn`), then notices read as text
(:mod:`.notices`); auto-replies and messages that are no report are told apart on the way.
"""

from __future__ import annotations

import email
import email.message
import email.policy
import re
from typing import Any, Final

import structlog

from plugins.inbound_dsn import arf
from plugins.inbound_dsn.dsn import DELIVERED_ACTIONS, dsn_blocks, failed_in_dsn, mta
from plugins.inbound_dsn.notices import failed_in_notice
from plugins.inbound_dsn.report import Kind, Report
from plugins.inbound_dsn.text import (
    addresses_in,
    cut_original,
    decode_header,
    header,
    message_text,
    normalise_newlines,
    original_part,
    parts_of,
)
from plugins.inbound_dsn.vendors import parse_ses

log = structlog.get_logger(__name__)

_BOUNCE_SUBJECT: Final = re.compile(
    r"undeliver|undelivered|delivery (?:status|fail|report|notification|problem|has failed)"
    r"|returned mail|mail delivery|failure notice|delivery failure|non-?delivery|not delivered"
    r"|could not be delivered|rejected|bounce|failed|returned to sender|mail system error"
    r"|unable to deliver|delivery error|permanent error|warning: message|message not delivered"
    r"|nondeliverable|delayed|mail could not|error|problem|notification",
    re.IGNORECASE,
)
_BOUNCE_FROM: Final = re.compile(
    r"mailer-?daemon|postmaster|mail ?delivery|mail administrator|mailadmin|bounce"
    r"|mail system|microsoftexchange|no-?reply|notify|returned",
    re.IGNORECASE,
)
_FAILURE_WORDS: Final = re.compile(
    r"deliver|could ?n.?o?t be|failed|failure|reject|refused|returned|bounced|unable to|error"
    r"|permanent|temporar|does not exist|unknown|invalid|no such|quota|blocked|denied",
    re.IGNORECASE,
)
_AUTO_REPLY_SUBJECT: Final = re.compile(
    r"^(?:auto(?:matic)?[ -]?(?:reply|response|antwort)|out of (?:the )?office|vacation"
    r"|away from|abwesenheit|autosvar|r[ée]ponse automatique)",
    re.IGNORECASE,
)
_NOTICE_LIMIT: Final = 64 * 1024


def parse_message(raw: bytes) -> Report:
    """Parse one raw message; never raises (an unreadable message is ``not_bounce``)."""
    try:
        return _parse(raw)
    except Exception as exc:  # noqa: BLE001 - the stdlib parser has corners that raise on hostile input
        log.warning("inbound_dsn.unparseable", error=type(exc).__name__, size=len(raw))
        return Report(kind="not_bounce")


def parse_path(path: str) -> list[dict[str, Any]]:
    """The scorer's view of one message file: one item per failed recipient or complaint."""
    with open(path, "rb") as handle:
        return scorer_items(parse_message(handle.read()))


def scorer_items(report: Report) -> list[dict[str, Any]]:
    """What ``scaisend parse-bounce`` prints: nothing for auto-replies, delivery notices and
    messages that are no report."""
    if report.kind not in ("bounce", "feedback"):
        return []
    return [item.to_json(report) for item in report.recipients]


def _parse(raw: bytes) -> Report:
    msg = email.message_from_bytes(normalise_newlines(raw), policy=email.policy.compat32)
    subject = decode_header(msg.get("subject"))
    parts = parts_of(msg)
    original = original_part(msg, parts)
    headers = _original_headers(original) if original is not None else {}

    body = message_text(msg)
    complaint = arf.parse_complaint(msg, original, parts, body)
    if complaint is not None:
        return _with_attribution(complaint, headers, msg, subject)

    ses = parse_ses(body)
    if ses is not None:
        return _with_attribution(ses, headers, msg, subject)

    blocks, per_message = dsn_blocks(parts, body)
    notice = cut_original(body)
    # real notices are short: whatever follows this much is no explanation worth reading
    text = notice[:_NOTICE_LIMIT]
    if not headers and len(notice) < len(body):
        headers = _headers_in_text(body, len(notice))
    if blocks:
        recipients = failed_in_dsn(blocks, text)
        if recipients:
            kind: Kind = "bounce"
            failed = [r for r in recipients if r.action not in DELIVERED_ACTIONS]
            if failed:
                # a report that also lists deliveries is about its failures only
                recipients = failed
            else:
                kind = "delivered"
            return _with_attribution(
                Report(
                    kind=kind,
                    recipients=tuple(recipients),
                    reporting_mta=mta(per_message.get("reporting-mta")),
                ),
                headers,
                msg,
                subject,
            )
    failed_header = addresses_in(" ".join(str(v) for v in msg.get_all("x-failed-recipients") or []))
    evidence = (
        bool(failed_header) or _has_codes(text) or msg.get_content_type() == "multipart/report"
    )
    if _is_auto_reply(msg, subject, evidence):
        return _with_attribution(Report(kind="vacation"), headers, msg, subject)
    if not failed_header and not _looks_like_bounce(msg, subject, text):
        return Report(kind="not_bounce", subject=subject)
    recipients = failed_in_notice(msg, text, headers, failed_header)
    return _with_attribution(
        Report(kind="bounce", recipients=tuple(recipients)), headers, msg, subject
    )


def _with_attribution(
    report: Report, headers: dict[str, str], msg: email.message.Message, subject: str | None
) -> Report:
    message_id = report.original_message_id or _message_id(headers.get("message-id"))
    if message_id is None:
        message_id = _message_id(header(msg, "in-reply-to")) or _message_id(
            header(msg, "references")
        )
    return Report(
        kind=report.kind,
        recipients=report.recipients,
        is_arf=report.is_arf,
        original_message_id=message_id,
        original_headers=report.original_headers or headers,
        reporting_mta=report.reporting_mta,
        subject=subject,
    )


def _message_id(value: str | None) -> str | None:
    if not value:
        return None
    found = re.search(r"<([^<>\s]+)>", value)
    token = found.group(1) if found else value.strip().split()[0] if value.strip() else ""
    return token or None


def _original_headers(part: email.message.Message) -> dict[str, str]:
    return {name.lower(): " ".join(str(value).split()) for name, value in part.items()}


_HEADER_LINE: Final = re.compile(
    r"^(message-id|from|to|subject|return-path|date|x-message-id|reply-to|sender)"
    r"[ \t]*:[ \t]*(.*)$",
    re.IGNORECASE | re.MULTILINE,
)


def _headers_in_text(body: str, start: int) -> dict[str, str]:
    """Headers of a returned message pasted into a notice's text from ``start`` on (the first of
    each, since a pasted original begins with its own header section)."""
    found: dict[str, str] = {}
    for match in _HEADER_LINE.finditer(body, start):
        found.setdefault(match.group(1).lower(), match.group(2).strip())
    return found


_CODES: Final = re.compile(r"(?<![\d.])(?:[245]\.\d{1,3}\.\d{1,3}|[45][0-5]\d)(?![\d.])")


def _has_codes(text: str) -> bool:
    return _CODES.search(text) is not None


def _is_auto_reply(msg: email.message.Message, subject: str | None, evidence: bool) -> bool:
    """An automatic reply; MTAs also mark bounces ``auto-replied``, so that header counts only
    when the text quotes no SMTP reply or status code."""
    if subject and _AUTO_REPLY_SUBJECT.search(subject.strip()):
        return True
    if evidence:
        return False
    auto = (header(msg, "auto-submitted") or "").strip().lower()
    if auto.startswith("auto-replied"):
        return True
    if any(msg.get(h) for h in ("x-autoreply", "x-autorespond", "x-autoresponder")):
        return True
    return (header(msg, "precedence") or "").strip().lower() == "auto_reply"


def _looks_like_bounce(msg: email.message.Message, subject: str | None, text: str) -> bool:
    sender = decode_header(msg.get("from")) or ""
    return_path = header(msg, "return-path")
    null_sender = return_path is not None and return_path.strip() in ("<>", "")
    if msg.get_content_type() == "multipart/report":
        return True
    # a notice says what went wrong: a reply or status code, or the words for a failure
    says_failure = _has_codes(text) or _FAILURE_WORDS.search(text) is not None
    if _BOUNCE_FROM.search(sender) or null_sender:
        return says_failure
    # from anyone else, a failure-sounding subject needs an SMTP reply or status code too
    return bool(subject and _BOUNCE_SUBJECT.search(subject) and _has_codes(text))
