"""Unsubscribing by mail: messages sent to the ``mailto:`` address of ``List-Unsubscribe``.

The address carries ``subject=unsubscribe <token>`` (RFC 2369, RFC 6068), so a mail client that
offers "unsubscribe" sends the recipient's own token back. The token is what authenticates the
request, as it does for the one-click URL; the message must also be addressed to the mailbox
the send named, so mail to any other address of the inbound domains is left to other plugins.
"""

from __future__ import annotations

import email.parser
import email.policy
import re

import structlog

from core import Runtime
from core.inbound import InboundMessage
from plugins.subscription.subscribers import Action, apply, lookup

log = structlog.get_logger("scaisend.subscription")

# Clients may prefix a reply marker or fold the line; the token itself never holds a space.
_SUBJECT = re.compile(r"^(?:\s*(?:re|fwd?)\s*:)*\s*unsubscribe\s+(\S+)\s*$", re.IGNORECASE)
FEATURE_NAME = "subscription_tracking"
_HEADERS = email.parser.BytesHeaderParser(policy=email.policy.default)


def _token(data: bytes) -> str | None:
    try:
        subject = _HEADERS.parsebytes(data).get("Subject")
    except Exception:  # noqa: BLE001 - a header the parser cannot read names no token
        return None
    match = _SUBJECT.match(str(subject)) if subject is not None else None
    return match.group(1) if match else None


def unsubscribe_by_mail(message: InboundMessage, runtime: Runtime) -> str | None:
    """Claim and apply an unsubscribe request; ``None`` when ``message`` is not one."""
    token = _token(message.data)
    if token is None:
        return None
    claims = runtime.tokens.verify(token)
    if claims is None:
        log.info("subscription.mail_ignored", reason="invalid token", peer=message.peer)
        return None
    tenant = runtime.config.tenants.get(claims.tenant)
    config = tenant.plugins.get(FEATURE_NAME, {}) if tenant is not None else {}
    mailbox = (config.get("unsubscribe_mailbox") or "").lower()
    subscriber = lookup(runtime, claims) if mailbox else None
    if subscriber is None or mailbox not in {rcpt.lower() for rcpt in message.rcpt_tos}:
        log.info("subscription.mail_ignored", reason="not this send's mailbox", peer=message.peer)
        return None
    action: Action = "unsubscribe_group" if subscriber.group_id is not None else "unsubscribe_all"
    apply(runtime, subscriber, action, subscriber.group_id, "mail")
    return "unsubscribe"
