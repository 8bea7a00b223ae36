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
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from core.pipeline import Recipient, Template
from core.send.compose import Address, Attachment, Personalization, Submission

CRLF = b"\r\n"
SOFT_BREAK = b"=\r\n"


def _normalise(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _wrap(line: bytes) -> list[bytes]:
    """Split an encoded line longer than 76 characters with soft breaks, never inside ``=XX``.

    ``binascii.b2a_qp`` can leave a 78-character line when it escapes trailing white space.
    """
    pieces = []
    while len(line) > 76:
        cut = 75
        if line[cut - 1 : cut] == b"=":
            cut -= 1
        elif line[cut - 2 : cut - 1] == b"=":
            cut -= 2
        pieces.append(line[:cut] + b"=")
        line = line[cut:]
    pieces.append(line)
    return pieces


def _qp_run(text: str) -> bytes:
    """``text`` quoted-printable encoded as a run that leaves the next run at a line start.

    The run ends with a soft line break, which decoders read as nothing.
    """
    encoded = binascii.b2a_qp(_normalise(text).encode("utf-8"), istext=True)
    if not encoded:
        return b""
    *lines, last = encoded.split(b"\n")
    wrapped = [piece for line in lines for piece in _wrap(line)] + _wrap(last + b"=")
    return CRLF.join(wrapped) + CRLF


# --- headers -----------------------------------------------------------------------------

_MAX_LINE = 78
_WORD_BYTES = 45  # 45 bytes of UTF-8 make 60 of base64: a 72-character encoded word
_SPECIALS = set('()<>[]:;@\\,."')


def _one_line(value: str) -> str:
    """Header values are one logical line: any line break becomes a space."""
    return " ".join(value.splitlines()) if any(c in value for c in "\r\n") else value


def _needs_encoding(value: str, room: int) -> bool:
    return (
        not value.isascii()
        or "=?" in value
        or any(ord(c) < 32 or ord(c) == 127 for c in value)
        or any(len(word) > room for word in value.split(" "))
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


def fold(name: str, tokens: Sequence[str], separator: str = " ") -> str:
    """Join ``tokens`` with ``separator``, folding between tokens to keep lines to 78."""
    lines: list[str] = []
    line = ""
    used = len(name) + 2
    for index, token in enumerate(tokens):
        piece = token + (separator.rstrip() if index < len(tokens) - 1 else "")
        if line and used + 1 + len(piece) > _MAX_LINE:
            lines.append(line)
            line, used = piece, 1 + len(piece)
        else:
            line = f"{line} {piece}" if line else piece
            used += len(piece) + (1 if used > len(name) + 2 else 0)
    lines.append(line)
    return "\r\n ".join(lines)


def encode_header_value(name: str, value: str) -> str:
    """An unstructured header value: RFC 2047 where needed, folded to 78-character lines."""
    value = _one_line(value)
    if _needs_encoding(value, _MAX_LINE - len(name) - 2):
        return fold(name, encoded_words(value, _MAX_LINE - len(name) - 2))
    return fold(name, value.split(" "))


def _phrase(name: str) -> str:
    name = _one_line(name)
    if _needs_encoding(name, 60):
        return " ".join(encoded_words(name))
    if any(c in _SPECIALS for c in name):
        return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return name


def ascii_domain(domain: str) -> str:
    # An unencodable domain is left as given; the relay refuses it if it cannot route it.
    with contextlib.suppress(UnicodeError):
        return domain.encode("idna").decode("ascii")
    return domain


def encode_address(address: Address) -> str:
    local, _, domain = address.email.rpartition("@")
    mailbox = f"{local}@{ascii_domain(domain)}"
    return f"{_phrase(address.name)} <{mailbox}>" if address.name else mailbox


def address_list(name: str, addresses: Sequence[Address]) -> str:
    return fold(name, [encode_address(a) for a in addresses], separator=", ")


def fold_list(name: str, value: str) -> str:
    """Fold a comma-separated ASCII value (``List-Unsubscribe``) at its commas."""
    return fold(name, _one_line(value).split(", "), separator=", ")


def header_line(name: str, value: str) -> bytes:
    return f"{name}: {value}".encode() + CRLF


def _parameter(name: str, value: str) -> str:
    """A MIME parameter; RFC 2231 for anything a quoted string cannot carry."""
    value = _one_line(value)
    if value.isascii() and not any(ord(c) < 32 for c in value):
        return f'{name}="' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{name}*=" + email.utils.encode_rfc2231(value, "utf-8")


@dataclass(frozen=True)
class EncodedBody:
    """A body template as precomputed quoted-printable runs with slots between them.

    Line ends are normalised to CRLF piece by piece; where a piece ends in a bare CR and the
    next begins with LF, the pair is one line break, as it is in the stamped text.
    """

    runs: tuple[bytes, ...]
    runs_without_leading_lf: tuple[bytes, ...]
    starts_with_lf: tuple[bool, ...]
    ends_with_cr: tuple[bool, ...]
    slots: tuple[Callable[[Recipient], str], ...]

    @classmethod
    def compile(cls, template: Template) -> EncodedBody:
        literals = template.literals
        return cls(
            runs=tuple(_qp_run(literal) for literal in literals),
            runs_without_leading_lf=tuple(
                _qp_run(literal[1:]) if literal.startswith("\n") else b"" for literal in literals
            ),
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
            if value:
                pending_cr = value.endswith("\r")
                out.append(_qp_run(value))
            if pending_cr and self.starts_with_lf[index]:
                out.append(self.runs_without_leading_lf[index])
            else:
                out.append(self.runs[index])
            if self.runs[index]:
                pending_cr = self.ends_with_cr[index]
        return b"".join(out)


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
            "Content-Type", f"{attachment.type};\r\n {_parameter('name', attachment.filename)}"
        ),
        header_line("Content-Transfer-Encoding", "base64"),
        header_line(
            "Content-Disposition",
            f"{attachment.disposition};\r\n {_parameter('filename', attachment.filename)}",
        ),
    ]
    if attachment.content_id:
        lines.append(header_line("Content-ID", f"<{attachment.content_id}>"))
    encoded = binascii.b2a_base64(attachment.content, newline=False)
    body = CRLF.join(encoded[i : i + 76] for i in range(0, len(encoded), 76))
    return b"".join(lines) + CRLF + body + CRLF


Piece = bytes | Callable[[Recipient], bytes]


def _multipart(subtype: str, parts: Sequence[Sequence[Piece]]) -> list[Piece]:
    boundary = _boundary()
    pieces: list[Piece] = [
        header_line("Content-Type", f'multipart/{subtype}; boundary="{boundary}"') + CRLF
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
    date = date or email.utils.formatdate(localtime=False, usegmt=True)
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
        header_line("Date", date),
        header_line("From", encode_address(submission.sender)),
        header_line("To", address_list("To", personalization.to)),
    ]
    if personalization.cc:
        head.append(header_line("Cc", address_list("Cc", personalization.cc)))
    if submission.reply_to:
        head.append(header_line("Reply-To", encode_address(submission.reply_to)))
    if subject.is_static:
        head.append(
            header_line(
                "Subject", encode_header_value("Subject", subject.stamp(Recipient(0, "", "")))
            )
        )
    for name, value in {**submission.headers, **personalization.headers}.items():
        head.append(header_line(name, encode_header_value(name, value)))
    head.append(header_line("MIME-Version", "1.0"))

    alternatives = []
    if text is not None:
        alternatives.append(_leaf("text/plain", EncodedBody.compile(text)))
    if html is not None:
        alternatives.append(_leaf("text/html", EncodedBody.compile(html)))
    body: list[Piece] = (
        _multipart("alternative", alternatives) if len(alternatives) > 1 else alternatives[0]
    )
    inline = [a for a in submission.attachments if a.disposition == "inline"]
    regular = [a for a in submission.attachments if a.disposition != "inline"]
    if inline and html is not None:
        body = _multipart("related", [body, *[[_attachment_part(a)] for a in inline]])
    else:
        regular = inline + regular
    if regular:
        body = _multipart("mixed", [body, *[[_attachment_part(a)] for a in regular]])

    return MessageTemplate(_join_static([b"".join(head), per_recipient_headers, *body]))
