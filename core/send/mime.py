"""Compile-once MIME: everything identical for all recipients is encoded once.

A body template's literal segments are quoted-printable encoded at compile time, each as a
run of its own that ends with a soft line break, so stamping a recipient only encodes the
slot values (a token URL is a few dozen bytes) and joins. A decoder sees the soft breaks as
nothing at all: the decoded body is exactly the stamped template.
"""

from __future__ import annotations

import binascii
import contextlib
import email.utils
import functools
import re
import secrets
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from core.pipeline import InlinePart, Recipient, Template
from core.send.compose import Address, Attachment, Personalization, Submission

CRLF = b"\r\n"
SOFT_BREAK = b"=\r\n"


def _normalise(text: str) -> str:
    if "\r" not in text:
        return text
    return text.replace("\r\n", "\n").replace("\r", "\n")


_QP_LINE = 76  # the longest encoded line RFC 2045 allows, soft line break included
# What quoted-printable leaves as it is (line breaks are handled apart); "=" is escaped first.
_PLAIN = bytes(range(0x20, 0x7F)) + b"\t\n"
_ESCAPES = [b"=%02X" % byte for byte in range(256)]
_UNSAFE = re.compile(rb"[\x00-\x08\x0b-\x1f\x7f-\xff]+")
_BLANKS = (b" ", b"\t")
_FEW_UNSAFE = 32  # distinct bytes to escape one replace at a time; more take one regex pass
# The longest piece of an encoded line that ends neither in "=" nor inside "=XX".
_QP_PIECE = re.compile(rb"[^\n]{1,75}(?<!=)(?<![=][0-9A-F])")


def _escape_run(match: re.Match[bytes]) -> bytes:
    return b"=" + match[0].hex("=").upper().encode("ascii")


def _escape_unsafe(data: bytes) -> bytes:
    unsafe = set(data.translate(None, _PLAIN))
    if len(unsafe) > _FEW_UNSAFE:  # text in a non-Latin script: most bytes are escaped
        return _UNSAFE.sub(_escape_run, data)
    # A replace is a memchr-speed pass, where a regex tests every byte in Python's matcher;
    # mail in a Latin script has a handful of distinct non-ASCII bytes.
    for byte in unsafe:
        data = data.replace(bytes((byte,)), _ESCAPES[byte])
    return data


def _wrap(line: bytes) -> bytes:
    """An encoded line cut into pieces of at most 75 characters, joined by soft breaks."""
    return b"=\r\n".join(_QP_PIECE.findall(line))


def _finish(line: bytes) -> bytes:
    """An encoded line that ends in a blank or is too long, made right."""
    # A blank that ends a line is encoded, as relays may strip it; the blanks before it are
    # then no longer at the end.
    if line[-1:] in _BLANKS:
        line = line[:-1] + _ESCAPES[line[-1]]
    return line if len(line) <= _QP_LINE else _wrap(line)


def _qp_run(text: str) -> bytes:
    """``text`` quoted-printable encoded as a run that leaves the next run at a line start.

    The run ends with a soft line break, which decoders read as nothing. Escaping is a pass
    of a C primitive over the whole text (replace, delete-translate); then each line is
    looked at once, and only lines over 76 characters or ending in a blank cost more. On the
    HTML corpus this takes 0.7 of ``binascii.b2a_qp`` plus the CRLF and rewrapping pass its
    output needs.
    """
    data = _normalise(text).encode("utf-8")
    if not data:
        return b""
    data = data.replace(b"=", b"=3D")
    if not data.isascii() or data.translate(None, _PLAIN):
        data = _escape_unsafe(data)
    lines = data.split(b"\n")
    if b"." in lines:
        # A lone "." would end the message at a relay that forgets to stuff it.
        lines = [b"=2E" if line == b"." else line for line in lines]
    last = lines.pop()
    # One look at each line's length and last byte: most need nothing.
    encoded = [
        line if len(line) <= _QP_LINE and line[-1:] not in _BLANKS else _finish(line)
        for line in lines
    ]
    # The run's closing soft break takes one character of its last line.
    encoded.append((last if len(last) < _QP_LINE else _wrap(last)) + b"=")
    return CRLF.join(encoded) + CRLF


# --- headers -----------------------------------------------------------------------------

_MAX_LINE = 78
_WORD_BYTES = 45  # 45 bytes of UTF-8 make 60 of base64: a 72-character encoded word
_PARAMETER_CHUNK = 60  # characters of a parameter value on one continuation line
_SPECIALS = set('()<>[]:;@\\,."')
# A word with the run of blanks before it; blanks at the very end go with the last word. A
# line may be folded only before a blank, and a continuation line must hold a non-blank.
_FOLD_UNITS = re.compile(r" *[^ ]+ *$| *[^ ]+| +")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _one_line(value: str) -> str:
    """Header values are one logical line: any line break becomes a space."""
    return " ".join(value.splitlines()) if any(c in value for c in "\r\n") else value


def _fold_units(value: str) -> list[str]:
    return _FOLD_UNITS.findall(value)


def _needs_encoding(value: str, room: int) -> bool:
    return (
        not value.isascii()
        or "=?" in value
        or _CONTROL.search(value) is not None
        or any(len(unit) > room for unit in _fold_units(value))
    )


def encoded_words(value: str, first_room: int = _MAX_LINE) -> list[str]:
    """RFC 2047 ``B`` encoded words, split between characters, each short enough to fold.

    The first word also fits in ``first_room`` characters (what the header name leaves).
    """
    words: list[str] = []
    chunk = ""
    limit = min(_WORD_BYTES, max(3, (first_room - 12) // 4 * 3))
    for char in value:
        if chunk and len((chunk + char).encode("utf-8")) > limit:
            words.append(chunk)
            chunk = char
            limit = _WORD_BYTES
        else:
            chunk += char
    if chunk or not words:
        words.append(chunk)
    return [
        "=?utf-8?b?" + binascii.b2a_base64(word.encode("utf-8"), newline=False).decode() + "?="
        for word in words
    ]


def _spaced(words: Sequence[str]) -> list[str]:
    """Fold units of words joined by single spaces (between encoded words they are nothing)."""
    return [word if index == 0 else " " + word for index, word in enumerate(words)]


def fold(name: str, units: Sequence[str]) -> str:
    """Join ``units`` exactly, breaking lines before units so lines keep to 78 characters.

    Every unit but the first begins with a blank, so a line break before one is a fold that
    unfolding undoes, and no continuation line is blank. A unit longer than a line gets a line
    of its own.
    """
    lines: list[str] = []
    line = ""
    used = len(name) + 2
    for unit in units:
        if line and used + len(unit) > _MAX_LINE:
            lines.append(line)
            line, used = unit, len(unit)
        else:
            line += unit
            used += len(unit)
    lines.append(line)
    return "\r\n".join(lines)


def encode_header_value(name: str, value: str) -> str:
    """An unstructured header value: RFC 2047 where needed, folded to 78-character lines."""
    value = _one_line(value)
    room = _MAX_LINE - len(name) - 2
    if _needs_encoding(value, room):
        return fold(name, _spaced(encoded_words(value, room)))
    return fold(name, _fold_units(value))


def _phrase_units(name: str, first_room: int) -> list[str]:
    """A display name as fold units: encoded words, or a quoted string or atoms with blanks."""
    name = _one_line(name)
    if not _needs_encoding(name, 60):
        if any(c in _SPECIALS for c in name):
            name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
        units = _fold_units(name)
        # Quoting can lengthen a word; one that no longer fits a line is encoded instead.
        if len(units[0]) <= first_room and all(len(unit) <= 70 for unit in units):
            return units
    return _spaced(encoded_words(name, first_room))


def ascii_domain(domain: str) -> str:
    if domain.isascii():
        return domain  # the IDNA codec leaves ASCII labels as they are
    # An unencodable domain is left as given; the relay refuses it if it cannot route it.
    with contextlib.suppress(UnicodeError):
        return domain.encode("idna").decode("ascii")
    return domain


def _address_units(address: Address, first_room: int) -> list[str]:
    local, _, domain = address.email.rpartition("@")
    mailbox = f"{local}@{ascii_domain(domain)}"
    if not address.name:
        return [mailbox]
    return [*_phrase_units(address.name, first_room), f" <{mailbox}>"]


def address_list(name: str, addresses: Sequence[Address]) -> str:
    """An address header's value, folded between addresses and between a name's words."""
    units: list[str] = []
    for index, address in enumerate(addresses):
        room = _MAX_LINE - len(name) - 2 if index == 0 else _MAX_LINE - 1
        piece = _address_units(address, room)
        if index:
            piece[0] = " " + piece[0]
        if index < len(addresses) - 1:
            piece[-1] += ","
        units.extend(piece)
    return fold(name, units)


def fold_list(name: str, value: str) -> str:
    """Fold a comma-separated ASCII value (``List-Unsubscribe``) at its commas."""
    items = _one_line(value).split(", ")
    return fold(name, _spaced([item + "," for item in items[:-1]] + items[-1:]))


def header_line(name: str, value: str) -> bytes:
    return f"{name}: {value}".encode() + CRLF


# The same for every personalization of a send (and often from send to send): encoded once.
@functools.lru_cache(maxsize=512)
def _static_header(name: str, value: str) -> bytes:
    return header_line(name, encode_header_value(name, value))


@functools.lru_cache(maxsize=2)
def _date_line(second: int) -> bytes:
    return header_line("Date", email.utils.formatdate(second, usegmt=True))


@functools.lru_cache(maxsize=128)
def _address_header(name: str, address: Address) -> bytes:
    return header_line(name, address_list(name, [address]))


def _parameter(name: str, value: str) -> list[str]:
    """A MIME parameter as the lines it takes: a quoted string when that is short and plain,
    else RFC 2231 percent-encoding in numbered continuations, none longer than a line.

    Quotes and backslashes go percent-encoded too: readers disagree on escapes in quoted
    strings, and some drop them.
    """
    value = _one_line(value)
    if (
        value.isascii()
        and not any(ord(c) < 32 or ord(c) == 127 or c in '"\\' for c in value)
        and len(value) <= _PARAMETER_CHUNK
    ):
        return [f'{name}="{value}"']
    encoded = email.utils.encode_rfc2231(value, "utf-8")
    if len(encoded) <= _PARAMETER_CHUNK:
        return [f"{name}*={encoded}"]
    chunks = []
    while encoded:
        cut = min(_PARAMETER_CHUNK, len(encoded))
        # Never split a %XX escape between two continuations.
        percent = encoded.rfind("%", cut - 2, cut)
        if percent != -1 and cut < len(encoded):
            cut = percent
        chunks.append(encoded[:cut])
        encoded = encoded[cut:]
    return [f"{name}*{n}*={chunk}" for n, chunk in enumerate(chunks)]


def _parameterised(value: str, parameters: Sequence[str]) -> str:
    """``value; p1; p2``, one parameter line per folded line."""
    return ";\r\n ".join([value, *parameters])


@dataclass(frozen=True)
class EncodedBody:
    """A body template as precomputed quoted-printable runs with slots between them.

    Line ends are normalised to CRLF piece by piece; where a piece ends in a bare CR and the
    next begins with LF, the pair is one line break, as it is in the stamped text.
    """

    literals: tuple[str, ...]
    runs: tuple[bytes, ...]
    starts_with_lf: tuple[bool, ...]
    ends_with_cr: tuple[bool, ...]
    slots: tuple[Callable[[Recipient], str], ...]
    # A run encoded again without its leading LF, for a recipient whose slot value before it
    # ends with CR (the two are one line break): rare, so encoded the first time it is needed.
    _without_leading_lf: dict[int, bytes] = field(default_factory=dict, compare=False)

    @classmethod
    def compile(cls, template: Template) -> EncodedBody:
        literals = template.literals
        return cls(
            literals=tuple(literals),
            runs=tuple(_qp_run(literal) for literal in literals),
            starts_with_lf=tuple(literal.startswith("\n") for literal in literals),
            ends_with_cr=tuple(literal.endswith("\r") for literal in literals),
            slots=template.slots,
        )

    def render(self, recipient: Recipient) -> bytes:
        if not self.slots:
            return self.runs[0]
        out = [self.runs[0]]
        pending_cr = self.ends_with_cr[0]
        for index, slot in enumerate(self.slots, start=1):
            value = slot(recipient)
            if pending_cr and value.startswith("\n"):
                value = value[1:]
                pending_cr = False  # that CR and this LF were one line break, now complete
            if value:
                pending_cr = value.endswith("\r")
                out.append(_qp_run(value))
            if pending_cr and self.starts_with_lf[index]:
                run = self._without_leading_lf.get(index)
                if run is None:
                    run = self._without_leading_lf[index] = _qp_run(self.literals[index][1:])
                out.append(run)
            else:
                out.append(self.runs[index])
            if self.runs[index]:
                pending_cr = self.ends_with_cr[index]
        return b"".join(out)


_ENCODED_BODIES: weakref.WeakKeyDictionary[Template, EncodedBody] = weakref.WeakKeyDictionary()


def _encoded_body(template: Template) -> EncodedBody:
    """A body template encoded once for every personalization of a send (they share it)."""
    try:
        encoded = _ENCODED_BODIES.get(template)
    except TypeError:  # a plugin's slot that cannot be hashed: encode without the cache
        return EncodedBody.compile(template)
    if encoded is None:
        encoded = _ENCODED_BODIES[template] = EncodedBody.compile(template)
    return encoded


def _boundary() -> str:
    # Random and long: it cannot occur in quoted-printable or base64 parts by chance.
    return "=_scaisend_" + secrets.token_hex(16)


def _leaf_headers(content_type: str) -> bytes:
    return header_line("Content-Type", f"{content_type}; charset=utf-8") + header_line(
        "Content-Transfer-Encoding", "quoted-printable"
    )


def _attachment_part(attachment: Attachment) -> bytes:
    lines = [
        header_line(
            "Content-Type",
            _parameterised(attachment.type, _parameter("name", attachment.filename)),
        ),
        header_line("Content-Transfer-Encoding", "base64"),
        header_line(
            "Content-Disposition",
            _parameterised(attachment.disposition, _parameter("filename", attachment.filename)),
        ),
    ]
    if attachment.content_id:
        lines.append(header_line("Content-ID", f"<{attachment.content_id}>"))
    encoded = binascii.b2a_base64(attachment.content, newline=False)
    body = CRLF.join(encoded[i : i + 76] for i in range(0, len(encoded), 76))
    return b"".join(lines) + CRLF + body + CRLF


_ENCODED_INLINE: weakref.WeakKeyDictionary[InlinePart, bytes] = weakref.WeakKeyDictionary()


def _inline_part(part: InlinePart) -> bytes:
    """A feature's inline part, base64-encoded once for every personalization of a send."""
    encoded = _ENCODED_INLINE.get(part)
    if encoded is None:
        attachment = Attachment(
            part.filename, part.data, part.content_type, "inline", part.content_id
        )
        encoded = _ENCODED_INLINE[part] = _attachment_part(attachment)
    return encoded


Piece = bytes | Callable[[Recipient], bytes]


def _multipart(subtype: str, parts: Sequence[Sequence[Piece]]) -> list[Piece]:
    boundary = _boundary()
    pieces: list[Piece] = [
        header_line(
            "Content-Type", _parameterised(f"multipart/{subtype}", [f'boundary="{boundary}"'])
        )
        + CRLF
    ]
    for part in parts:
        pieces.append(f"--{boundary}".encode() + CRLF)
        pieces.extend(part)
        pieces.append(CRLF)
    pieces.append(f"--{boundary}--".encode() + CRLF)
    return pieces


def _leaf(content_type: str, body: EncodedBody) -> list[Piece]:
    if not body.slots:
        return [_leaf_headers(content_type) + CRLF + body.runs[0]]
    return [_leaf_headers(content_type) + CRLF, body.render]


@dataclass(frozen=True)
class MessageTemplate:
    """One personalization's messages: static bytes and per-recipient pieces."""

    pieces: tuple[Piece, ...]

    def render(self, recipient: Recipient) -> bytes:
        return b"".join(p if isinstance(p, bytes) else p(recipient) for p in self.pieces)


def _join_static(pieces: list[Piece]) -> tuple[Piece, ...]:
    merged: list[Piece] = []
    for piece in pieces:
        if isinstance(piece, bytes) and merged and isinstance(merged[-1], bytes):
            merged[-1] = merged[-1] + piece
        else:
            merged.append(piece)
    return tuple(merged)


def compile_message(
    submission: Submission,
    personalization: Personalization,
    *,
    message_id: str,
    id_domain: str,
    html: Template | None,
    text: Template | None,
    subject: Template,
    feature_headers: Sequence[tuple[str, Template]],
    date: str | None = None,
) -> MessageTemplate:
    """The template of every copy sent for ``personalization``."""
    date_line = header_line("Date", date) if date else _date_line(int(time.time()))
    id_domain = ascii_domain(id_domain)

    def per_recipient_headers(recipient: Recipient) -> bytes:
        lines = [header_line("Message-ID", f"<{message_id}.{recipient.index}@{id_domain}>")]
        if not subject.is_static:
            lines.append(
                header_line("Subject", encode_header_value("Subject", subject.stamp(recipient)))
            )
        for name, value in feature_headers:
            lines.append(header_line(name, fold_list(name, value.stamp(recipient))))
        return b"".join(lines)

    head = [
        date_line,
        _address_header("From", submission.sender),
        header_line("To", address_list("To", personalization.to)),
    ]
    if personalization.cc:
        head.append(header_line("Cc", address_list("Cc", personalization.cc)))
    if submission.reply_to:
        head.append(_address_header("Reply-To", submission.reply_to))
    if subject.is_static:
        head.append(_static_header("Subject", subject.stamp(Recipient(0, "", ""))))
    for name, value in {**submission.headers, **personalization.headers}.items():
        head.append(_static_header(name, value))
    head.append(header_line("MIME-Version", "1.0"))

    inline = [a for a in submission.attachments if a.disposition == "inline"]
    regular = [a for a in submission.attachments if a.disposition != "inline"]
    alternatives = []
    if text is not None:
        alternatives.append(_leaf("text/plain", _encoded_body(text)))
    if html is not None:
        html_leaf = _leaf("text/html", _encoded_body(html))
        if html.related:
            # The HTML and every part it refers to by cid: form one multipart/related.
            parts = [[_attachment_part(a)] for a in inline]
            parts += [[_inline_part(part)] for part in html.related]
            html_leaf = _multipart("related", [html_leaf, *parts])
            inline = []
        alternatives.append(html_leaf)
    body: list[Piece] = (
        _multipart("alternative", alternatives) if len(alternatives) > 1 else alternatives[0]
    )
    if inline and html is not None:
        body = _multipart("related", [body, *[[_attachment_part(a)] for a in inline]])
    else:
        regular = inline + regular
    if regular:
        body = _multipart("mixed", [body, *[[_attachment_part(a)] for a in regular]])

    return MessageTemplate(_join_static([b"".join(head), per_recipient_headers, *body]))
