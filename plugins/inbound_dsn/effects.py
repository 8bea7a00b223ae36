"""What an attributed report does: an event per failed copy, and suppression of the address
for a hard bounce or a complaint."""

from __future__ import annotations

import re
from typing import Any

from core.events import Event
from core.runtime import Runtime
from core.suppressions import Kind
from plugins.inbound_dsn.attribution import Target
from plugins.inbound_dsn.report import FailedRecipient, Report

NOT_FAILURES = frozenset({"delivered", "relayed", "expanded"})
"""DSN actions that report success: such an item in a bounce is not a failure."""

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(text: str | None) -> str | None:
    """``text`` as a database keeps it. A report quotes whatever the remote server wrote, and
    PostgreSQL refuses NUL (a lone surrogate is not UTF-8 anywhere): failing there would
    answer the report 451, and its sender would retry it for days."""
    return None if text is None else _UNSTORABLE.sub("\ufffd", text)


def event_type(report: Report, item: FailedRecipient) -> str | None:
    """``spamreport``, ``bounce`` (permanent), ``blocked`` or ``deferred`` (temporary), or
    ``None`` for an item that reports no failure."""
    if report.kind == "feedback":
        return "spamreport"
    if (item.action or "").lower() in NOT_FAILURES:
        return None
    if item.hard:
        return "bounce"
    return "blocked" if item.reason == "blocked" else "deferred"


def event_data(report: Report, item: FailedRecipient, target: Target) -> dict[str, Any]:
    data: dict[str, Any] = {
        "recipient_number": target.number,
        "attribution": target.method,
        "status": item.status,
        "reply_code": item.reply_code,
        "diagnostic": item.diagnostic,
        "reason": item.reason,
        "hard": item.hard,
        "reported_recipient": item.recipient,
    }
    optional = {
        "original_recipient": item.original_recipient,
        "action": item.action,
        "remote_mta": item.remote_mta,
        "feedback_type": item.feedback_type,
        "reporting_mta": report.reporting_mta,
    }
    data.update({key: value for key, value in optional.items() if value})
    return {
        key: storable(value) if isinstance(value, str) else value for key, value in data.items()
    }


def suppression_kind(event: str) -> Kind | None:
    if event == "bounce":
        return "bounce"
    if event == "spamreport":
        return "spamreport"
    return None


def apply(runtime: Runtime, report: Report, item: FailedRecipient, target: Target) -> str | None:
    """Suppress, then record the event (blocking); the event type, or ``None`` if none.

    The list entry is written first: if the event cannot be, the sender retries and the
    entry, being idempotent, is not doubled.
    """
    kind = event_type(report, item)
    if kind is None:
        return None
    data = event_data(report, item, target)
    listed = suppression_kind(kind)
    if listed is not None and target.proven:
        runtime.suppressions.add(
            target.tenant,
            target.email,
            listed,
            reason=storable(item.diagnostic or item.reason),
            data={
                "message_id": target.message_id,
                "status": storable(item.status),
                "reason": storable(item.reason),
            },
        )
    runtime.emit(
        Event(
            type=kind,
            tenant=target.tenant,
            message_id=target.message_id,
            recipient=target.email,
            data=data,
        )
    )
    return kind
