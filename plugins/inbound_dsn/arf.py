"""Complaints: ARF feedback reports (RFC 5965) and the vendor formats that carry no report part.

The complaining recipient is, in order: the report's ``Original-Rcpt-To`` or
``Removal-Recipient`` fields, a vendor header naming the original recipient, or the ``To`` of the
returned message. A report that redacts the recipient still yields one item with an empty
address, so the complaint is not lost and can be attributed by its Message-ID.
"""

from __future__ import annotations

import email.message
import re
from typing import Final

from plugins.inbound_dsn.report import FailedRecipient, Report
from plugins.inbound_dsn.text import Parts, addresses_in, decode_header, header, part_text, payload

_REPORT_TYPES: Final = frozenset({"message/feedback-report", "text/feedback-report"})
_RECIPIENT_FIELDS: Final = ("original-rcpt-to", "removal-recipient")
# Vendor feedback loops that forward the complained-about message with the original recipient in
# a header of their own instead of an ARF part.
_VENDOR_RECIPIENT_HEADERS: Final = ("x-hmxmroriginalrecipient", "x-original-rcpt-to")
_COMPLAINT_SUBJECT: Final = re.compile(
    r"complaint|abuse report|feedback report|spam report|\bfbl\b", re.IGNORECASE
)
# A Feedback-Type field with the User-Agent or Version field every ARF report carries beside it.
_PASTED_REPORT: Final = re.compile(
    r"^feedback-type:[ \t]*[\w-]+[ \t]*$(?:\n[^\n]*){0,12}?\n(?:user-agent|version):",
    re.IGNORECASE | re.MULTILINE,
)
_FIELD: Final = re.compile(r"^([A-Za-z][A-Za-z0-9-]*)[ \t]*:[ \t]*(.*)$", re.MULTILINE)


def parse_complaint(
    msg: email.message.Message, original: email.message.Message | None, parts: Parts, body: str
) -> Report | None:
    """A ``feedback`` report, or None when the message is no complaint."""
    for part, ctype in parts:
        if ctype in _REPORT_TYPES:
            return _from_report(_fields(part), msg, original)
    if ("eedback-" in body or "EEDBACK-" in body) and _PASTED_REPORT.search(body):
        # ARF fields pasted into a text part by a relay that flattened the report
        return _from_report(_text_fields(body), msg, original)
    if parts[0][1] == "multipart/report" and (
        (msg.get_param("report-type") or "") == "feedback-report"
    ):
        return _from_report({}, msg, original)
    vendor = _vendor_recipient(msg, original)
    if vendor is not None:
        return _complaint(vendor, "abuse", None, original, is_arf=False)
    if (header(msg, "x-apple-unsubscribe") or "").strip().lower() == "true":
        sender = addresses_in(decode_header(msg.get("from")) or "")
        return _complaint(sender[:1], "opt-out", None, None, is_arf=False)
    return None


def _text_fields(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for match in _FIELD.finditer(text):
        found.setdefault(match.group(1).lower(), []).append(match.group(2).strip())
    return found


def _fields(part: email.message.Message) -> dict[str, list[str]]:
    children = payload(part)
    text: str
    if isinstance(children, list):
        text = "\n".join(f"{k}: {v}" for sub in children for k, v in sub.items())
    else:
        text = part_text(part)
    return _text_fields(text)


def _from_report(
    fields: dict[str, list[str]],
    msg: email.message.Message,
    original: email.message.Message | None,
) -> Report:
    recipients: list[str] = []
    for name in _RECIPIENT_FIELDS:
        for value in fields.get(name, []):
            recipients.extend(a for a in addresses_in(value) if a not in recipients)
    if not recipients:
        recipients = _vendor_recipient(msg, original) or []
    if not recipients and original is not None:
        recipients = addresses_in(decode_header(original.get("to")) or "")[:1]
    feedback_type = (fields.get("feedback-type") or ["abuse"])[0].lower() or "abuse"
    return _complaint(recipients, feedback_type, fields, original, is_arf=True)


def _vendor_recipient(
    msg: email.message.Message, original: email.message.Message | None
) -> list[str] | None:
    for holder in (original, msg):
        if holder is None:
            continue
        for name in _VENDOR_RECIPIENT_HEADERS:
            value = holder.get(name)
            if value:
                return addresses_in(str(value))[:1] or None
    if original is not None and _COMPLAINT_SUBJECT.search(decode_header(msg.get("subject")) or ""):
        return addresses_in(decode_header(original.get("to")) or "")[:1] or None
    return None


def _complaint(
    recipients: list[str],
    feedback_type: str,
    fields: dict[str, list[str]] | None,
    original: email.message.Message | None,
    *,
    is_arf: bool,
) -> Report:
    items = tuple(
        FailedRecipient(
            recipient=address,
            reason="feedback",
            feedback_type=feedback_type,
            action="failed",
        )
        for address in (recipients or [""])
    )
    message_id = None
    if original is not None and original.get("message-id"):
        found = re.search(r"<([^<>\s]+)>", str(original.get("message-id")))
        message_id = found.group(1) if found else str(original.get("message-id")).strip()
    headers = (
        {name.lower(): " ".join(str(v).split()) for name, v in original.items()}
        if original is not None
        else {}
    )
    if fields:
        for name in ("original-mail-from", "source-ip", "reported-domain", "arrival-date"):
            if fields.get(name):
                headers.setdefault(f"x-arf-{name}", fields[name][0])
    return Report(
        kind="feedback",
        recipients=items,
        is_arf=is_arf,
        original_message_id=message_id or None,
        original_headers=headers,
    )
