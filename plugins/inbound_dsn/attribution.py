"""Which sent copy a report is about: the VERP address first, then the returned headers, then
the failed address among recent sends.

A VERP code is signed and a Message-ID carries a random message id, so a report naming either
proves it saw the copy; a report that only names an address proves nothing, and its effects are
limited accordingly (see :attr:`Target.proven`).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import peewee as pw

from core.inbound import InboundMessage
from core.runtime import Runtime
from core.send.verp import PREFIX, VerpCodec
from core.storage.models import Message, MessageRecipient, utcnow
from plugins.inbound_dsn.report import FailedRecipient, Report

RECENT = dt.timedelta(days=30)
"""How far back an address-only report is matched against sends."""

Method = Literal["verp", "message_id", "x_message_id", "recipient"]

# Message-IDs are <message id>.<recipient number>@<domain> (core/send/mime.py).
_COPY_MESSAGE_ID = re.compile(r"<?\s*([0-9a-f]{32})\.(\d{1,9})@", re.IGNORECASE)
_BARE_MESSAGE_ID = re.compile(r"^\s*<?([0-9a-f]{32})>?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Target:
    """One copy ScaiSend sent: its tenant, message, recipient number and address."""

    tenant: str
    message_id: str
    number: int
    email: str
    method: Method

    @property
    def proven(self) -> bool:
        """Whether the report showed knowledge of the copy (a signed VERP code or the random
        message id), which a forger cannot have: only then may it suppress the address."""
        return self.method != "recipient"


@dataclass(frozen=True)
class Attribution:
    item: FailedRecipient
    target: Target | None


def _addresses(item: FailedRecipient) -> set[str]:
    return {a.lower() for a in (item.recipient, item.original_recipient) if a}


def _about(target: Target, items: Sequence[FailedRecipient]) -> FailedRecipient:
    """The item describing ``target``; a copy has one recipient, so a report about it that
    names another address (a forward, an alias) is still about it."""
    for item in items:
        if target.email.lower() in _addresses(item):
            return item
    if items:
        return items[0]
    return FailedRecipient(recipient=target.email.lower())


class Attributor:
    """Blocking database lookups (run it off the event loop)."""

    def __init__(self, runtime: Runtime) -> None:
        self.db = runtime.db
        self.verp = VerpCodec(runtime.config.signing_keys)
        self.bounce_domain = runtime.config.bounce_domain.lower().rstrip(".")
        self._quoted = re.compile(
            rf"(?<![\w.+-])({PREFIX}[a-z2-7]{{48}}@{re.escape(self.bounce_domain)})(?![\w-])",
            re.IGNORECASE,
        )

    def attribute(self, message: InboundMessage, report: Report) -> list[Attribution]:
        with self.db.connection_context():
            copy = self._by_verp(message) or self._by_message_id(report)
            if copy is not None:
                return [Attribution(_about(copy, report.recipients), copy)]
            of_message = self._by_x_message_id(report)
            return [
                Attribution(item, self._among(of_message, item) or self._by_recipient(item))
                for item in report.recipients
            ]

    def _copy(self, message_id: str, number: int, method: Method) -> Target | None:
        row = (
            MessageRecipient.select(MessageRecipient, Message)
            .join(Message)
            .where((MessageRecipient.message == message_id) & (MessageRecipient.number == number))
            .first()
        )
        if row is None:
            return None
        return Target(row.message.tenant, message_id, row.number, row.email, method)

    def _verp_codes(self, message: InboundMessage) -> Iterable[str]:
        yield from message.rcpt_tos
        # A report sent elsewhere may still quote the copy's envelope sender (an ARF
        # Original-Mail-From, the returned Return-Path); the code is signed wherever it is.
        yield from self._quoted.findall(message.data.decode("latin-1"))

    def _by_verp(self, message: InboundMessage) -> Target | None:
        for address in self._verp_codes(message):
            local, _, domain = address.rpartition("@")
            if domain.lower().rstrip(".") != self.bounce_domain:
                continue
            decoded = self.verp.parse(local)
            if decoded is not None:
                found = self._copy(decoded[0], decoded[1], "verp")
                if found is not None:
                    return found
        return None

    def _by_message_id(self, report: Report) -> Target | None:
        for value in (report.original_message_id, report.original_headers.get("message-id")):
            match = _COPY_MESSAGE_ID.search(value or "")
            if match:
                found = self._copy(match[1].lower(), int(match[2]), "message_id")
                if found is not None:
                    return found
        return None

    def _by_x_message_id(self, report: Report) -> list[Target]:
        match = _BARE_MESSAGE_ID.match(report.original_headers.get("x-message-id", ""))
        if match is None:
            return []
        rows = (
            MessageRecipient.select(MessageRecipient, Message)
            .join(Message)
            .where(MessageRecipient.message == match[1].lower())
        )
        return [
            Target(row.message.tenant, row.message.id, row.number, row.email, "x_message_id")
            for row in rows
        ]

    def _among(self, targets: Sequence[Target], item: FailedRecipient) -> Target | None:
        wanted = _addresses(item)
        return next((t for t in targets if t.email.lower() in wanted), None)

    def _by_recipient(self, item: FailedRecipient) -> Target | None:
        wanted = _addresses(item)
        if not wanted:
            return None
        row = (
            MessageRecipient.select(MessageRecipient, Message)
            .join(Message)
            .where(
                pw.fn.LOWER(MessageRecipient.email).in_(sorted(wanted))
                & (Message.created_at >= utcnow() - RECENT)
            )
            .order_by(Message.created_at.desc())
            .first()
        )
        if row is None:
            return None
        return Target(row.message.tenant, row.message.id, row.number, row.email, "recipient")
