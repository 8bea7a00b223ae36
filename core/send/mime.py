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
from email.header import Header

from core.pipeline import Recipient, Template
from core.send.compose import Address, Attachment, Personalization, Submission

CRLF = b"\r\n"
SOFT_BREAK = b"=\r\n"


def _qp(text: str) -> bytes:
    # Normalise line ends first: QP encoding must see bare LF for text lines.
    normalised = text.replace("\r\n", "\n").replace("\r", "\n")
    return binascii.b2a_qp(normalised.encode("utf-8"), istext=True).replace(b"\n", CRLF)


def _qp_run(text: str) -> bytes:
    """``text`` encoded as a run that leaves the next run at the start of a line."""
    encoded = _qp(text)
    return encoded + SOFT_BREAK if encoded else b""


def encode_address(address: Address) -> str:
    local, _, domain = address.email.rpartition("@")
    # An unencodable domain is left as given; the relay refuses it if it cannot route it.
    with contextlib.suppress(UnicodeError):
        domain = domain.encode("idna").decode("ascii")
    return email.utils.formataddr((address.name or "", f"{local}@{domain}"), charset="utf-8")


def encode_header_value(name: str, value: str) -> str:
    """RFC 2047 for non-ASCII, and folding for long values (78-character lines)."""
    if value.isascii() and len(name) + 2 + len(value) <= 78:
        return value
    return Header(value, "utf-8" if not value.isascii() else "us-ascii", header_name=name).encode(
        linesep="\r\n"
    )


def fold_list(name: str, value: str) -> str:
    """Fold a comma-separated ASCII value (``List-Unsubscribe``) at its commas."""
    if len(name) + 2 + len(value) <= 78 or ", " not in value:
        return value
    return ",\r\n ".join(value.split(", "))


def header_line(name: str, value: str) -> bytes:
    return f"{name}: {value}".encode() + CRLF


@dataclass(frozen=True)
class EncodedBody:
    """A body template as precomputed quoted-printable runs with slots between them."""

    runs: tuple[bytes, ...]
    slots: tuple[Callable[[Recipient], str], ...]

    @classmethod
    def compile(cls, template: Template) -> EncodedBody:
        return cls(tuple(_qp_run(literal) for literal in template.literals), template.slots)

    def render(self, recipient: Recipient) -> bytes:
        if not self.slots:
            return self.runs[0]
        out = [self.runs[0]]
        for slot, run in zip(self.slots, self.runs[1:], strict=True):
            out.append(_qp_run(slot(recipient)))
            out.append(run)
        return b"".join(out)


def _boundary() -> str:
    # Random and long: it cannot occur in quoted-printable or base64 parts by chance.
    return "=_scaisend_" + secrets.token_hex(16)


def _leaf_headers(content_type: str) -> bytes:
    return header_line("Content-Type", f"{content_type}; charset=utf-8") + header_line(
        "Content-Transfer-Encoding", "quoted-printable"
    )


def _attachment_part(attachment: Attachment) -> bytes:
    filename = encode_header_value("filename", attachment.filename)
    quoted = filename.replace("\\", "\\\\").replace('"', '\\"')
    lines = [
        header_line("Content-Type", f'{attachment.type}; name="{quoted}"'),
        header_line("Content-Transfer-Encoding", "base64"),
        header_line("Content-Disposition", f'{attachment.disposition}; filename="{quoted}"'),
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
        header_line("To", ", ".join(encode_address(a) for a in personalization.to)),
    ]
    if personalization.cc:
        head.append(header_line("Cc", ", ".join(encode_address(a) for a in personalization.cc)))
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
