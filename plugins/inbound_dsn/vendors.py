"""Vendor notices that are data rather than prose: Amazon SES notifications (JSON, often inside an
SNS envelope) for bounces, complaints and deliveries; and providers whose notices are written in
the reader's language, so that only the provider's own marks say what happened."""

from __future__ import annotations

import json
import re
from typing import Any, Final

from plugins.inbound_dsn.reasons import classify, is_hard
from plugins.inbound_dsn.report import FailedRecipient, Kind, Report
from plugins.inbound_dsn.text import find_reply_code, find_status

_KINDS: Final[dict[str, Kind]] = {
    "bounce": "bounce",
    "complaint": "feedback",
    "delivery": "delivered",
}
# A provider's mark in a notice, and the reason its notices mean whatever language they are in.
_LOCALISED: Final = (
    # Google Groups refuses a post from a non-member or to a group that does not exist
    ("groups.google.com/support", "rejected"),
)
# Long JSON lines arrive folded: a line break followed by one space inside a string.
_FOLD: Final = re.compile(r"\n[ \t]")


def parse_ses(text: str) -> Report | None:
    """A report from an SES notification in ``text``, or None when there is none."""
    if "notificationType" not in text:
        return None
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        return None
    document = _load(text[start : end + 1])
    if isinstance(document, dict) and isinstance(document.get("Message"), str):
        document = _load(document["Message"])
    if not isinstance(document, dict):
        return None
    kind = _KINDS.get(str(document.get("notificationType", "")).lower())
    if kind is None:
        return None
    mail = document.get("mail") if isinstance(document.get("mail"), dict) else {}
    message_id = mail.get("messageId") if isinstance(mail, dict) else None
    headers = _headers(mail)
    if kind == "bounce":
        recipients = _bounced(document.get("bounce"))
    elif kind == "feedback":
        recipients = _complained(document.get("complaint"))
    else:
        recipients = _delivered(document.get("delivery"))
    return Report(
        kind=kind,
        recipients=tuple(recipients),
        is_arf=False,
        original_message_id=str(message_id) if message_id else headers.get("message-id"),
        original_headers=headers,
    )


def _load(text: str) -> Any:
    for candidate in (text, _FOLD.sub("", text)):
        try:
            return json.loads(candidate, strict=False)
        except ValueError:
            continue
    return None


def _headers(mail: Any) -> dict[str, str]:
    found: dict[str, str] = {}
    if not isinstance(mail, dict):
        return found
    for header in mail.get("headers") or []:
        if isinstance(header, dict) and isinstance(header.get("name"), str):
            found.setdefault(header["name"].lower(), str(header.get("value", "")))
    return found


def _entries(section: Any, key: str) -> list[dict[str, Any]]:
    if not isinstance(section, dict) or not isinstance(section.get(key), list):
        return []
    return [
        e for e in section[key] if isinstance(e, dict) and isinstance(e.get("emailAddress"), str)
    ]


def _bounced(section: Any) -> list[FailedRecipient]:
    permanent = isinstance(section, dict) and section.get("bounceType") == "Permanent"
    items = []
    for entry in _entries(section, "bouncedRecipients"):
        diagnostic = str(entry.get("diagnosticCode") or "") or None
        status = find_status(str(entry.get("status") or "")) or find_status(diagnostic or "")
        action = str(entry.get("action") or "failed").lower()
        reason = classify(diagnostic, status, action=action)
        items.append(
            FailedRecipient(
                recipient=entry["emailAddress"].strip().lower(),
                status=status,
                reply_code=find_reply_code(diagnostic or ""),
                diagnostic=diagnostic,
                reason=reason,
                hard=permanent and is_hard(reason, status),
                action=action,
            )
        )
    return items


def _complained(section: Any) -> list[FailedRecipient]:
    feedback_type = "abuse"
    if isinstance(section, dict) and section.get("complaintFeedbackType"):
        feedback_type = str(section["complaintFeedbackType"]).lower()
    return [
        FailedRecipient(
            recipient=entry["emailAddress"].strip().lower(),
            reason="feedback",
            feedback_type=feedback_type,
            action="failed",
        )
        for entry in _entries(section, "complainedRecipients")
    ]


def _delivered(section: Any) -> list[FailedRecipient]:
    if not isinstance(section, dict) or not isinstance(section.get("recipients"), list):
        return []
    return [
        FailedRecipient(recipient=str(r).strip().lower(), reason="delivered", action="delivered")
        for r in section["recipients"]
        if isinstance(r, str)
    ]


def localised_reason(text: str) -> str | None:
    """The reason a provider's localised notice stands for, or None when none is recognised."""
    lowered = text.lower()
    for mark, reason in _LOCALISED:
        if mark in lowered:
            return reason
    return None
