"""Text helpers for reading notices: line endings, decoded text, addresses, codes, the returned
original."""

from __future__ import annotations

import email.header
import email.message
import html
import re
from typing import Final

ADDRESS: Final = re.compile(
    # starting only where a local part can start keeps the scan linear in long words
    r"(?<![A-Za-z0-9!#$%&'*+/=?^_`{|}~-])"
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+"
)
# An enhanced status code, not part of a dotted IP address or version number.
_STATUS: Final = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?!\d|\.\d)")
_REPLY_WITH_STATUS: Final = re.compile(
    r"(?<![\d.])([245][0-5]\d)[ -]+[245]\.\d{1,3}\.\d{1,3}(?!\d)"
)
_REPLY: Final = re.compile(
    r"(?:^|[\s:<>(\[\"'=]|said:|reply:)([245][0-5]\d)(?=[ -]\S|\s*$)", re.MULTILINE
)
_TAGS: Final = re.compile(r"<(?:script|style)\b.*?</(?:script|style)>|<[^>]*>", re.S | re.I)
_ORIGINAL_TYPES: Final = frozenset(
    {
        "message/rfc822",
        "text/rfc822-headers",
        "message/rfc822-headers",
        "message/partial",
        "message/global",
        "message/global-headers",
    }
)
# Lines that introduce the returned copy of the original message in a plain-text notice.
_ORIGINAL_MARKER: Final = re.compile(
    r"^[ \t>]*(?:[-=_*#]{2,}[ \t]*)?(?:"
    r"(?:this is a )?copy of (?:the |your )?(?:original )?message"
    r"|below this line is a copy"
    r"|(?:the )?original message (?:follows|headers?|was|is)?\b(?!.{0,6}received)"
    r"|original message\b"
    r"|unsent message (?:below|follows)"
    r"|returned message"
    r"|message headers? follows?"
    r"|(?:the )?headers? (?:of|from) (?:the |your )?(?:original )?message"
    r"|undelivered message (?:headers|follows)"
    r"|content-type: message/rfc822"
    r"|original (?:e-?mail|mail) (?:follows|headers?)"
    r"|forwarded message"
    r"|bounced e-?mail"
    r")",
    re.MULTILINE,
)
_ASCII_LOWER: Final = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_HEADER_BLOCK: Final = re.compile(
    r"^(?:return-path|received|from|message-id|date)[ \t]*:.*\n"
    r"(?:(?:[ \t].*|[a-z][\w-]*[ \t]*:.*)\n){2,}",
    re.MULTILINE,
)


def header(msg: email.message.Message, name: str) -> str | None:
    """A header's raw text (compat32 hands back ``Header`` objects for undecodable bytes)."""
    value = msg.get(name)
    return None if value is None else str(value)


def payload(part: email.message.Message) -> list[email.message.Message] | str:
    """A part's sub-parts or undecoded text; empty when its charset parameter is unusable."""
    try:
        found = part.get_payload()
    except (ValueError, LookupError):  # a charset parameter the codec machinery rejects
        return ""
    if isinstance(found, list):
        return [p for p in found if isinstance(p, email.message.Message)]
    return found if isinstance(found, str) else ""


def decoded_payload(part: email.message.Message) -> bytes | None:
    try:
        data = part.get_payload(decode=True)
    except (ValueError, LookupError):
        return None
    return data if isinstance(data, bytes) else None


def normalise_newlines(raw: bytes) -> bytes:
    """CRLF and CR-only line endings become LF, so one set of rules reads all three."""
    if b"\r" not in raw:
        return raw
    return raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n")


def decode_header(value: object) -> str | None:
    if value is None:
        return None
    raw = str(value)
    if "=?" not in raw:  # no encoded words: nothing to decode
        return " ".join(raw.split())
    try:
        parts = email.header.decode_header(raw)
    except Exception:  # noqa: BLE001 - malformed encoded words: keep the raw text
        return " ".join(raw.split())
    chunks = []
    for chunk, charset in parts:
        if isinstance(chunk, bytes):
            try:
                chunks.append(chunk.decode(charset or "utf-8", errors="replace"))
            except LookupError:
                chunks.append(chunk.decode("utf-8", errors="replace"))
        else:
            chunks.append(chunk)
    return " ".join("".join(chunks).split())


def addresses_in(text: str) -> list[str]:
    return [m.group(0).strip(".").lower() for m in ADDRESS.finditer(text)]


def find_status(text: str) -> str | None:
    """The first failure (4.x.x or 5.x.x) status code in ``text``, else the first success one."""
    success = None
    for match in _STATUS.finditer(text):
        if match.group(1) != "2":
            return ".".join(match.groups())
        if success is None:
            success = ".".join(match.groups())
    return success


_STATUS_AFTER_REPLY: Final = re.compile(
    r"(?<![\d.])[245][0-5]\d[ -]+['\"(#]?([245]\.\d{1,3}\.\d{1,3})(?!\d|\.\d)"
    r"|\(#([245]\.\d{1,3}\.\d{1,3})\)"
)


def replied_status(text: str) -> str | None:
    """The status code the remote server itself gave (after its reply code, or qmail's
    ``(#5.7.1)``): the last one, since relays quote earlier answers before their own."""
    found = None
    for match in _STATUS_AFTER_REPLY.finditer(text):
        found = match.group(1) or match.group(2)
    return found


def find_reply_code(text: str) -> str | None:
    match = _REPLY_WITH_STATUS.search(text) or _REPLY.search(text)
    return match.group(1) if match else None


def part_text(part: email.message.Message) -> str:
    data = decoded_payload(part)
    if data is None:
        found = payload(part)
        return found if isinstance(found, str) else ""
    charset = part.get_content_charset() or "utf-8"
    try:
        text = data.decode(charset, errors="replace")
    except LookupError:
        text = data.decode("utf-8", errors="replace")
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if part.get_content_type() == "text/html":
        text = html.unescape(_TAGS.sub("\n", text))
    return text


def message_text(msg: email.message.Message) -> str:
    """The readable text of a notice, without the parts that return the original message."""
    chunks: list[str] = []
    plain_seen = False
    stack: list[email.message.Message] = [msg]
    while stack:
        part = stack.pop(0)
        ctype = part.get_content_type()
        if ctype in _ORIGINAL_TYPES and part is not msg:
            continue
        children = payload(part)
        if isinstance(children, list):
            stack[0:0] = children
            continue
        # a multipart type whose boundary is missing is read as the text it really is
        if ctype.startswith(("text/", "multipart/")) or part is msg:
            if ctype == "text/html" and plain_seen:
                continue
            plain_seen = plain_seen or ctype == "text/plain"
            chunks.append(part_text(part))
    return "\n\n".join(chunks)


Parts = list[tuple[email.message.Message, str]]
"""Every part of a message with its content type, worked out once."""


def parts_of(msg: email.message.Message) -> Parts:
    return [(part, part.get_content_type()) for part in msg.walk()]


def original_part(msg: email.message.Message, parts: Parts) -> email.message.Message | None:
    """The headers of the returned original message, when a MIME part carries them. When that
    message is itself a report (a forwarded bounce), the original is the one it returns."""
    found = None
    for part, ctype in parts:
        if part is msg or ctype not in _ORIGINAL_TYPES:
            continue
        if found is not None and found.get_content_type() != "multipart/report":
            break
        children = payload(part)
        if isinstance(children, list) and children:
            if len(children[0]) > 0:
                found = children[0]
                continue
            # blank lines before the headers leave the parser an empty header section
            inner = payload(children[0])
            text = inner if isinstance(inner, str) else ""
        else:
            text = part_text(part)
        if text.strip():
            found = email.message_from_string(text.lstrip("\n"))
    return found


def cut_original(text: str) -> str:
    """The notice without the returned original pasted at its end."""
    cut = len(text)
    # case-sensitive patterns over lower-cased text run much faster; the rare characters whose
    # lower case is longer fall back to ASCII-only lower-casing, which keeps every offset
    lowered = text.lower()
    if len(lowered) != len(text):
        lowered = text.translate(_ASCII_LOWER)
    marker = _ORIGINAL_MARKER.search(lowered)
    if marker is not None:
        cut = marker.start()
    block = _HEADER_BLOCK.search(lowered)
    if block is not None and block.start() < cut:
        cut = block.start()
    return text[:cut]
