"""Parse an inbound message into a :class:`Report`: DSNs, vendor bounces, complaints, auto-replies.

RFC 3464 delivery-status fields are read wherever they appear (a ``message/delivery-status``
part, or pasted into a plain-text notice). Notices without them are read as text: the failed
addresses are the ones the notice names that are neither its own sender and recipient nor the
returned message's sender, and each one's diagnostic is the paragraph around it.
"""

from __future__ import annotations

import email
import email.header
import email.message
import email.policy
import re
from typing import Any, Final

import structlog

from plugins.inbound_dsn import arf
from plugins.inbound_dsn.reasons import classify, is_hard
from plugins.inbound_dsn.report import FailedRecipient, Kind, Report
from plugins.inbound_dsn.text import (
    ADDRESS,
    Parts,
    addresses_in,
    cut_original,
    decode_header,
    decoded_payload,
    find_reply_code,
    find_status,
    header,
    message_text,
    normalise_newlines,
    original_part,
    parts_of,
    payload,
    replied_status,
)
from plugins.inbound_dsn.vendors import localised_reason, parse_ses

log = structlog.get_logger(__name__)

_DSN_TYPES: Final = frozenset(
    {"message/delivery-status", "message/global-delivery-status", "text/delivery-status"}
)
_FIELD: Final = re.compile(r"^([A-Za-z][A-Za-z0-9-]*)[ \t]*:[ \t]*(.*)$")
_RECIPIENT_FIELDS: Final = ("final-recipient", "original-recipient", "x-actual-recipient")
_DAEMON_LOCALS: Final = frozenset({"mailer-daemon", "postmaster", "mailerdaemon", "mail-daemon"})
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
_DELIVERED_ACTIONS: Final = frozenset({"delivered", "relayed", "expanded"})


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

    blocks, per_message = _dsn_blocks(parts, body)
    # real notices are short: whatever follows this much is no explanation worth reading
    text = cut_original(body)[:_NOTICE_LIMIT]
    if not headers:
        headers = _headers_in_text(message_text(msg, include_original=True))
    if blocks:
        recipients = _from_dsn(blocks, text)
        if recipients:
            kind: Kind = "bounce"
            if all(r.action in _DELIVERED_ACTIONS for r in recipients):
                kind = "delivered"
            return _with_attribution(
                Report(
                    kind=kind,
                    recipients=tuple(recipients),
                    reporting_mta=_mta(per_message.get("reporting-mta")),
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
    recipients = _from_text(msg, text, headers, failed_header)
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


def _headers_in_text(text: str) -> dict[str, str]:
    """Headers of a returned message pasted into a plain-text notice (the last of each wins,
    since the notice's own headers never appear in its body and a quoted original comes last)."""
    marker = _returned_start(text)
    if marker < 0:
        return {}
    found: dict[str, str] = {}
    for match in _HEADER_LINE.finditer(text, marker):
        found.setdefault(match.group(1).lower(), match.group(2).strip())
    return found


def _returned_start(text: str) -> int:
    cut = len(cut_original(text))
    return cut if cut < len(text) else -1


_PASTED_DSN: Final = re.compile(r"^(?:final|original)-recipient\s*:", re.IGNORECASE | re.MULTILINE)


def _dsn_blocks(parts: Parts, body: str) -> tuple[list[dict[str, str]], dict[str, str]]:
    """Per-recipient field blocks and the per-message fields of every delivery-status part, or
    of DSN fields pasted into the text when no such part exists."""
    texts = [_part_text(part) for part, ctype in parts if ctype in _DSN_TYPES]
    if not texts and _PASTED_DSN.search(body):
        texts = [body]
    blocks: list[dict[str, str]] = []
    per_message: dict[str, str] = {}
    for text in texts:
        for block in _field_blocks(text):
            if any(name in block for name in _RECIPIENT_FIELDS):
                blocks.append(block)
            else:
                for name, value in block.items():
                    per_message.setdefault(name, value)
    return blocks, per_message


def _part_text(part: email.message.Message) -> str:
    children = payload(part)
    if isinstance(children, list):
        return "\n\n".join("\n".join(f"{k}: {v}" for k, v in sub.items()) for sub in children)
    data = decoded_payload(part)
    if data is not None:
        return data.decode("utf-8", errors="replace")
    return children


def _field_blocks(text: str) -> list[dict[str, str]]:
    """``Name: value`` paragraphs (continuation lines folded in), lower-cased names."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    last: str | None = None
    for line in text.split("\n"):
        if not line.strip():
            if current:
                blocks.append(current)
            current, last = {}, None
            continue
        if line[0] in " \t" and last is not None:
            current[last] += " " + line.strip()
            continue
        match = _FIELD.match(line)
        if match is None:
            last = None
            continue
        name = match.group(1).lower()
        if name in current and name in _RECIPIENT_FIELDS and "final-recipient" in current:
            # a DSN with its blank lines lost: a second recipient starts a new block
            blocks.append(current)
            current = {}
        current[name] = match.group(2).strip()
        last = name
    if current:
        blocks.append(current)
    return blocks


def _address(value: str | None) -> str | None:
    if not value:
        return None
    if ";" in value:
        value = value.split(";", 1)[1]
    match = ADDRESS.search(value)
    if match:
        return match.group(0).strip(".").lower()
    return None


def _mta(value: str | None) -> str | None:
    if not value:
        return None
    return value.split(";", 1)[-1].strip() or None


def _from_dsn(blocks: list[dict[str, str]], text: str) -> list[FailedRecipient]:
    found: dict[str, FailedRecipient] = {}
    named = [a for b in blocks for a in (_address(b.get("final-recipient")),) if a]
    for block in blocks:
        final = _address(block.get("final-recipient")) or _address(block.get("x-actual-recipient"))
        original = _address(block.get("original-recipient"))
        recipient = final or original
        if recipient is None:
            continue
        action = _action(block.get("action"))
        diagnostic = _clean(block.get("diagnostic-code"))
        if diagnostic and ";" in diagnostic.split(" ", 1)[0]:
            diagnostic = diagnostic.split(";", 1)[1].strip()
        # without a Diagnostic-Code, the notice's paragraph about the address explains it
        context = diagnostic or _paragraph_about(text, recipient, named) or ""
        status = _best_status(block.get("status"), context)
        reply = find_reply_code(context) or _reply_from_field(block.get("diagnostic-code"))
        if action in _DELIVERED_ACTIONS:
            reason = "delivered"
        else:
            reason = classify(context, status, action=action)
            if reason == "undefined" and len(blocks) == 1:
                reason = classify(text, status, action=action)
        if action == "delayed" and reason == "undefined":
            reason = "expired"
        item = FailedRecipient(
            recipient=recipient,
            original_recipient=original if original and original != recipient else None,
            status=status,
            reply_code=reply,
            diagnostic=diagnostic or _clean(context) or None,
            reason=reason,
            hard=is_hard(reason, status) and action not in ("delayed", *_DELIVERED_ACTIONS),
            action=action,
            remote_mta=_mta(block.get("remote-mta")),
        )
        if recipient not in found or (found[recipient].action != "failed" and action == "failed"):
            found[recipient] = item
    return list(found.values())


def _action(value: str | None) -> str | None:
    """The DSN action, with the variants some MTAs write (``deliverable``, ``Delayed -``)
    brought back to RFC 3464's words."""
    words = (value or "").strip().lower().split()
    if not words:
        return None
    word = words[0].strip(";:-,")
    for standard in ("failed", "delayed", "delivered", "relayed", "expanded"):
        if word.startswith(standard[:5]):
            return standard
    return word


def _reply_from_field(value: str | None) -> str | None:
    return find_reply_code(value) if value else None


def _best_status(field: str | None, context: str) -> str | None:
    """The Status field unless it is generic (X.0.0) and the diagnostic names a precise code."""
    given = find_status(field or "")
    replied = replied_status(context)
    if given is None:
        return replied or find_status(context)
    if replied and replied[0] == given[0]:
        return replied
    precise = find_status(context)
    if precise and given.endswith(".0.0") and precise[0] == given[0]:
        return precise
    return given


def _clean(value: str | None) -> str | None:
    if not value:
        return None
    cleaned = " ".join(value.split())
    return cleaned[:1000] or None


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
    return bool(subject and _BOUNCE_SUBJECT.search(subject) and says_failure)


def _from_text(
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
        around = _paragraph_about(text, address, candidates) or ""
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
                diagnostic=_clean(around) or _clean(text[:1000]),
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


def _paragraph_about(text: str, address: str, others: list[str] | None = None) -> str | None:
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
