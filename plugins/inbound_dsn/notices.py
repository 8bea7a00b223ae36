"""Notices without delivery-status fields, read as text: the failed addresses are the ones the
notice names that are neither its own sender and recipient, nor the returned message's sender,
nor an address it offers for help; each one's diagnostic is the paragraph around it."""

from __future__ import annotations

import email.message
import re
from typing import Final

from plugins.inbound_dsn.reasons import classify, is_hard
from plugins.inbound_dsn.report import FailedRecipient
from plugins.inbound_dsn.text import (
    addresses_in,
    decode_header,
    find_reply_code,
    find_status,
)
from plugins.inbound_dsn.vendors import localised_reason

_DAEMON_LOCALS: Final = frozenset({"mailer-daemon", "postmaster", "mailerdaemon", "mail-daemon"})


def clean(value: str | None) -> str | None:
    if not value:
        return None
    cleaned = " ".join(value.split())
    return cleaned[:1000] or None


def failed_in_notice(
    msg: email.message.Message, text: str, headers: dict[str, str], failed_header: list[str]
) -> list[FailedRecipient]:
    excluded = set()
    for name in ("from", "to", "reply-to", "return-path", "sender", "delivered-to", "envelope-to"):
        excluded.update(addresses_in(decode_header(msg.get(name)) or ""))
    for name in ("from", "return-path", "sender", "reply-to"):
        excluded.update(addresses_in(headers.get(name, "")))
    message_ids = set(addresses_in(" ".join(str(v) for v in msg.get_all("message-id") or [])))
    message_ids.update(addresses_in(headers.get("message-id", "")))
    candidates: list[str] = list(dict.fromkeys(failed_header))
    if not candidates:
        lowered = text.lower()
        # the notice's help addresses and the envelope sender it quotes are no recipients
        for mention in (_HELP_ADDRESS, _SENDER_MENTION):
            excluded.update(a for m in mention.finditer(lowered) for a in addresses_in(m.group(0)))
        named = addresses_in(_strip_noise(lowered))
        candidates = [
            a for a in dict.fromkeys(named) if _plausible(a, message_ids) and a not in excluded
        ]
        if not candidates:
            # a sender writing to itself: its address is then the recipient too
            candidates = [a for a in dict.fromkeys(_standalone(text)) if _plausible(a, message_ids)]
    if not candidates:
        candidates = addresses_in(headers.get("to", ""))[:1]
    recipients = []
    for address in candidates[:50]:
        around = paragraph_about(text, address, candidates) or ""
        # the paragraph naming the address first; the whole notice when it says nothing
        status = find_status(around) or (find_status(text) if len(candidates) == 1 else None)
        reason = classify(around, status, action="failed")
        if reason == "undefined":
            reason = localised_reason(text) or classify(text, status, action="failed")
        recipients.append(
            FailedRecipient(
                recipient=address,
                status=status,
                reply_code=find_reply_code(around) or find_reply_code(text),
                diagnostic=clean(around) or clean(text[:1000]),
                reason=reason,
                hard=is_hard(reason, status),
                action="failed",
            )
        )
    return recipients


def _plausible(address: str, message_ids: set[str]) -> bool:
    return address not in message_ids and address.split("@", 1)[0] not in _DAEMON_LOCALS


_STANDALONE: Final = re.compile(r"^[ \t]*<?([^\s<>@]+@[^\s<>@]+?)>?:?[ \t]*$", re.MULTILINE)


def _standalone(text: str) -> list[str]:
    """Addresses that stand alone on a line, the way most notices list failed recipients."""
    return [a for m in _STANDALONE.finditer(text) for a in addresses_in(m.group(1))]


_NOISE: Final = re.compile(
    r"^[> \t]*(?:received|message-id|in-reply-to|references|x-[\w-]+|dkim-signature|list-[\w-]+)"
    r"\s*:.*"
    r"(?:\n[ \t].*)*",
    re.MULTILINE,
)


# Addresses a notice offers for help ("please contact <postmaster@...>") are not recipients.
_HELP_ADDRESS: Final = re.compile(
    r"(?:contact|send (?:e-?)?mail to|write to|mailto:|reply to)[^@\n]{0,20}"
    r"<?[\w.+'=/-]+@[\w.-]+>?",
)


_SENDER_MENTION: Final = re.compile(
    r"(?:mail\s+from|envelope-from|envelope sender|return-path|x-postfix-sender)\s*[:=;]?\s*"
    r"(?:rfc822;\s*)?<?[\w.+'=/-]+@[\w.-]+>?"
)


def _strip_noise(lowered: str) -> str:
    """The lower-cased notice without header lines."""
    return _NOISE.sub("", lowered)


def paragraph_about(text: str, address: str, others: list[str] | None = None) -> str | None:
    """The lines about ``address``: from each line naming it to the next blank line, or to the
    next line naming another of the failed addresses."""
    lines = text.split("\n")
    needle = address.lower()
    rivals = [o for o in others or () if o != needle]

    def about_other(line: str) -> bool:
        lowered = line.lower()
        return needle not in lowered and any(o in lowered for o in rivals)

    picked: list[str] = []
    seen: set[int] = set()
    for index, line in enumerate(lines):
        if needle not in line.lower():
            continue
        stop = index + 1
        while (
            stop < len(lines)
            and stop - index < 12
            and lines[stop].strip()
            and not about_other(lines[stop])
        ):
            stop += 1
        if stop == index + 1:
            # the address stood alone: its explanation is the next paragraph
            nxt = stop
            while nxt < len(lines) and not lines[nxt].strip():
                nxt += 1
            stop = nxt
            while (
                stop < len(lines)
                and stop - nxt < 8
                and lines[stop].strip()
                and not about_other(lines[stop])
            ):
                stop += 1
        for number in range(index, stop):
            if number not in seen:
                seen.add(number)
                picked.append(lines[number])
        if len(picked) > 40:
            break
    return "\n".join(picked) if picked else None
