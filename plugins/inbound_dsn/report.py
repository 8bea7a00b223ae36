"""What parsing an inbound report yields: the failed recipients and how to attribute them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["bounce", "feedback", "vacation", "delivered", "not_bounce"]
"""``bounce``: a delivery failure (permanent or temporary); ``feedback``: a complaint (ARF or a
vendor format); ``vacation``: an auto-reply; ``delivered``: a success or relay notice;
``not_bounce``: anything else."""


@dataclass(frozen=True)
class FailedRecipient:
    """One recipient a report says something about."""

    recipient: str
    """The final recipient address, lower-cased, without ``rfc822;`` or angle brackets."""
    original_recipient: str | None = None
    status: str | None = None
    """The enhanced status code (``5.1.1``); the precise one from the diagnostic text when the
    ``Status`` field is generic."""
    reply_code: str | None = None
    """The SMTP reply code (``550``)."""
    diagnostic: str | None = None
    reason: str = "undefined"
    """One of :data:`plugins.inbound_dsn.reasons.REASONS`."""
    hard: bool = False
    """A permanent failure that should suppress the address."""
    action: str | None = None
    """The DSN ``Action`` (failed, delayed, delivered, relayed, expanded) when given."""
    remote_mta: str | None = None
    feedback_type: str | None = None
    """For complaints: ``abuse``, ``fraud``, ``virus``, ``other``... (ARF Feedback-Type)."""

    def to_json(self, report: Report) -> dict[str, Any]:
        """The item ``scaisend parse-bounce`` prints (the scorer's format)."""
        item: dict[str, Any] = {
            "recipient": self.recipient,
            "status": self.status,
            "reason": self.reason,
            "hardbounce": self.hard,
            "replycode": self.reply_code,
            "diagnostic": self.diagnostic,
            "kind": report.kind,
            "is_arf": report.is_arf,
        }
        if self.original_recipient:
            item["original_recipient"] = self.original_recipient
        if self.feedback_type:
            item["feedback_type"] = self.feedback_type
        return item


@dataclass(frozen=True)
class Report:
    """A parsed inbound message."""

    kind: Kind
    recipients: tuple[FailedRecipient, ...] = ()
    is_arf: bool = False
    original_message_id: str | None = None
    """The Message-ID of the message that failed (or was complained about), from the returned
    headers, the ARF original, or the report's own references."""
    original_headers: dict[str, str] = field(default_factory=dict)
    """Headers of the returned original message when the report carries them (lower-cased
    names; ``x-message-id``, ``message-id``, ``return-path``, ``from``, ``to``...)."""
    reporting_mta: str | None = None
    subject: str | None = None
