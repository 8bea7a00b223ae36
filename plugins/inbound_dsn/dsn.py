"""RFC 3464 delivery-status fields, wherever they appear: in ``message/delivery-status`` parts,
or pasted into a notice's text by a relay that flattened the report."""

from __future__ import annotations

import email.message
import re
from typing import Final

from plugins.inbound_dsn.notices import clean, paragraph_about
from plugins.inbound_dsn.reasons import classify, is_hard
from plugins.inbound_dsn.report import FailedRecipient
from plugins.inbound_dsn.text import (
    ADDRESS,
    Parts,
    decoded_payload,
    find_reply_code,
    find_status,
    payload,
    replied_status,
)

_DSN_TYPES: Final = frozenset(
    {"message/delivery-status", "message/global-delivery-status", "text/delivery-status"}
)
_FIELD: Final = re.compile(r"^([A-Za-z][A-Za-z0-9-]*)[ \t]*:[ \t]*(.*)$")
_RECIPIENT_FIELDS: Final = ("final-recipient", "original-recipient", "x-actual-recipient")
DELIVERED_ACTIONS: Final = frozenset({"delivered", "relayed", "expanded"})
_PASTED_DSN: Final = re.compile(r"^(?:final|original)-recipient\s*:", re.IGNORECASE | re.MULTILINE)


def dsn_blocks(parts: Parts, body: str) -> tuple[list[dict[str, str]], dict[str, str]]:
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


def mta(value: str | None) -> str | None:
    if not value:
        return None
    return value.split(";", 1)[-1].strip() or None


def failed_in_dsn(blocks: list[dict[str, str]], text: str) -> list[FailedRecipient]:
    found: dict[str, FailedRecipient] = {}
    named = [a for b in blocks for a in (_address(b.get("final-recipient")),) if a]
    for block in blocks:
        final = _address(block.get("final-recipient")) or _address(block.get("x-actual-recipient"))
        original = _address(block.get("original-recipient"))
        recipient = final or original
        if recipient is None:
            continue
        action = _action(block.get("action"))
        diagnostic = clean(block.get("diagnostic-code"))
        if diagnostic and ";" in diagnostic.split(" ", 1)[0]:
            diagnostic = diagnostic.split(";", 1)[1].strip()
        # without a Diagnostic-Code, the notice's paragraph about the address explains it
        context = diagnostic or paragraph_about(text, recipient, named) or ""
        status = _best_status(block.get("status"), context)
        reply = find_reply_code(context) or find_reply_code(block.get("diagnostic-code") or "")
        if action in DELIVERED_ACTIONS:
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
            diagnostic=diagnostic or clean(context) or None,
            reason=reason,
            hard=is_hard(reason, status) and action not in ("delayed", *DELIVERED_ACTIONS),
            action=action,
            remote_mta=mta(block.get("remote-mta")),
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
