"""Compile once, stamp many: a message body becomes literal segments plus per-recipient slots.

Features never see or produce re-serialised HTML. Each one records edits against the author's
original text (replace a span, insert at an offset, add a header); core checks that edits from
different features never overlap and only then joins them into a :class:`Template`. Stamping a
recipient is one ``str.join`` over precomputed literals and that recipient's slot values, so
every byte outside an edit is exactly the author's.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class Recipient:
    """One addressee of a compiled message, as stamping sees it."""

    index: int
    email: str
    token: str
    substitutions: Mapping[str, str] = field(default_factory=dict)


Slot = Callable[[Recipient], str]
"""A per-recipient value: called once for every recipient while stamping."""

Value = str | Slot

# RFC 5322 msg-id without its angle brackets: dot-atom "@" dot-atom.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_CONTENT_ID = re.compile(rf"{_ATOM}(?:\.{_ATOM})*@{_ATOM}(?:\.{_ATOM})*")
_CONTENT_TYPE = re.compile(r"[a-z]+/[a-z0-9.+-]+")


class EditConflict(ValueError):
    """Two edits touch overlapping text; the later one is refused."""


@dataclass(frozen=True, order=True)
class Edit:
    start: int
    end: int
    seq: int
    value: Value = field(compare=False)
    feature: str = field(compare=False)


class Part:
    """One body of a message (``text/html`` or ``text/plain``) and the edits made to it."""

    def __init__(self, content_type: str, source: str) -> None:
        self.content_type = content_type
        self.source = source
        self._edits: list[Edit] = []
        self._seq = 0

    def __repr__(self) -> str:
        return f"Part({self.content_type!r}, {len(self.source)} chars, {len(self._edits)} edits)"

    @property
    def edits(self) -> tuple[Edit, ...]:
        return tuple(self._edits)

    def _add(self, edit: Edit) -> None:
        if not 0 <= edit.start <= edit.end <= len(self.source):
            raise EditConflict(
                f"edit [{edit.start}, {edit.end}) is outside the {len(self.source)}-char body"
            )
        position = bisect.bisect_left(self._edits, edit)
        for neighbour in self._edits[max(position - 1, 0) : position + 1]:
            if _overlaps(edit, neighbour):
                raise EditConflict(
                    f"{edit.feature}: edit [{edit.start}, {edit.end}) overlaps "
                    f"{neighbour.feature}'s edit [{neighbour.start}, {neighbour.end})"
                )
        self._edits.insert(position, edit)

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def merge(self, staged: StagedPart) -> None:
        """Add a feature's staged edits, all or none."""
        snapshot = list(self._edits)
        try:
            for start, end, value in staged.pending:
                self._add(Edit(start, end, self._next_seq(), value, staged.feature))
        except EditConflict:
            self._edits = snapshot
            raise

    def compile(self) -> Template:
        pieces: list[Value] = []
        cursor = 0
        for edit in self._edits:
            if edit.start > cursor:
                pieces.append(self.source[cursor : edit.start])
            pieces.append(edit.value)
            cursor = max(cursor, edit.end)
        if cursor < len(self.source):
            pieces.append(self.source[cursor:])
        return Template.from_pieces(pieces)


def _overlaps(a: Edit, b: Edit) -> bool:
    return _spans_overlap(a.start, a.end, b.start, b.end)


def _spans_overlap(a_start: int, a_end: int, b_start: int, b_end: int) -> bool:
    # Two insertions at one offset are fine (they keep their order); a replacement may not
    # share any character with another edit, nor have an insertion strictly inside it.
    if a_start == a_end and b_start == b_end:
        return False
    if a_start == a_end:
        return b_start < a_start < b_end
    if b_start == b_end:
        return a_start < b_start < a_end
    return a_start < b_end and b_start < a_end


class StagedPart:
    """The view of a :class:`Part` that one feature's ``instrument`` call edits.

    Edits are collected here and merged into the part only when the call returns in time, so a
    plugin that raises or overruns its budget leaves no half-applied changes behind.
    """

    def __init__(self, part: Part, feature: str) -> None:
        self._part = part
        self.feature = feature
        self.pending: list[tuple[int, int, Value]] = []

    @property
    def content_type(self) -> str:
        return self._part.content_type

    @property
    def source(self) -> str:
        """The author's text: offsets of every edit refer to it."""
        return self._part.source

    def replace(self, start: int, end: int, value: Value) -> None:
        """Replace ``source[start:end]`` with ``value`` (text, or a per-recipient slot)."""
        if not 0 <= start <= end <= len(self._part.source):
            raise EditConflict(f"span [{start}, {end}) is outside the body")
        self.pending.append((start, end, value))

    def insert(self, offset: int, value: Value) -> None:
        """Insert ``value`` before ``source[offset]`` (``len(source)`` appends)."""
        self.replace(offset, offset, value)

    def append(self, value: Value) -> None:
        self.insert(len(self._part.source), value)

    def is_free(self, start: int, end: int) -> bool:
        """Whether an edit of ``[start, end)`` would overlap no earlier or pending edit.

        Features check this to leave alone text another feature (or core's substitutions)
        has already claimed, rather than have their whole edit set refused.
        """
        committed = any(_spans_overlap(start, end, e.start, e.end) for e in self._part._edits)
        return not committed and not any(
            _spans_overlap(start, end, s, e) for s, e, _ in self.pending
        )

    def find_all(self, needle: str) -> Iterator[int]:
        """Offsets of every non-overlapping occurrence of ``needle`` in the source."""
        if not needle:
            return
        start = self._part.source.find(needle)
        while start != -1:
            yield start
            start = self._part.source.find(needle, start + len(needle))


@dataclass(frozen=True)
class InlinePart:
    """A part the HTML refers to as ``cid:<content_id>``, sent beside it (multipart/related)."""

    content_id: str
    content_type: str
    data: bytes = field(repr=False)
    filename: str


@dataclass(frozen=True)
class Template:
    """Literal text with per-recipient slots, ready to stamp.

    ``related`` holds the inline parts an HTML body refers to; they are the same for every
    recipient and travel with the body they belong to.
    """

    literals: tuple[str, ...]
    slots: tuple[Slot, ...]
    related: tuple[InlinePart, ...] = ()

    @classmethod
    def from_pieces(cls, pieces: list[Value]) -> Template:
        literals: list[str] = [""]
        slots: list[Slot] = []
        for piece in pieces:
            if isinstance(piece, str):
                literals[-1] += piece
            else:
                slots.append(piece)
                literals.append("")
        return cls(tuple(literals), tuple(slots))

    @property
    def is_static(self) -> bool:
        return not self.slots

    def stamp(self, recipient: Recipient) -> str:
        if not self.slots:
            return self.literals[0]
        out = [self.literals[0]]
        for slot, literal in zip(self.slots, self.literals[1:], strict=True):
            out.append(slot(recipient))
            out.append(literal)
        return "".join(out)


class Document:
    """The message bodies and extra headers that features instrument."""

    def __init__(self, html: str | None = None, text: str | None = None) -> None:
        self.html = Part("text/html", html) if html is not None else None
        self.text = Part("text/plain", text) if text is not None else None
        self.headers: list[tuple[str, Value, str]] = []
        self.inline: list[InlinePart] = []

    def parts(self) -> list[Part]:
        return [part for part in (self.html, self.text) if part is not None]

    def stage(self, feature: str) -> StagedDocument:
        return StagedDocument(self, feature)

    def compile(self) -> CompiledDocument:
        html = self.html.compile() if self.html is not None else None
        if html is not None and self.inline:
            html = replace(html, related=tuple(self.inline))
        return CompiledDocument(
            html=html,
            text=self.text.compile() if self.text is not None else None,
            headers=tuple((name, _as_template(value)) for name, value, _ in self.headers),
        )


class StagedDocument:
    """What a feature's ``instrument`` hook receives as ``doc``: staged views of the parts."""

    def __init__(self, document: Document, feature: str) -> None:
        self._document = document
        self.feature = feature
        self.html = StagedPart(document.html, feature) if document.html is not None else None
        self.text = StagedPart(document.text, feature) if document.text is not None else None
        self.headers: list[tuple[str, Value]] = []
        self.inline: list[InlinePart] = []

    def add_inline(self, content_id: str, content_type: str, data: bytes, filename: str) -> None:
        """Send ``data`` inline beside the HTML body, which refers to it as ``cid:content_id``."""
        if self.html is None:
            raise ValueError("inline parts need an HTML body to refer to them")
        if not _CONTENT_ID.fullmatch(content_id):
            raise ValueError(f"invalid Content-ID {content_id!r}")
        if not _CONTENT_TYPE.fullmatch(content_type):
            raise ValueError(f"invalid content type {content_type!r}")
        if any(c in filename for c in "\r\n"):
            raise ValueError("a filename may not contain a line break")
        self.inline.append(InlinePart(content_id, content_type, data, filename))

    def add_header(self, name: str, value: Value) -> None:
        """Add a header to every recipient's message; a slot makes it per-recipient."""
        if not name or any(c in name for c in ":\r\n ") or not name.isascii():
            raise ValueError(f"invalid header name {name!r}")
        if isinstance(value, str) and ("\r" in value or "\n" in value):
            raise ValueError(f"header {name} would contain a line break")
        self.headers.append((name, value))

    def commit(self) -> None:
        """Merge every staged edit into the document, or none of them."""
        merged: list[Part] = []
        try:
            for staged in (self.html, self.text):
                if staged is not None and staged.pending:
                    part = staged._part
                    part.merge(staged)
                    merged.append(part)
        except EditConflict:
            for part in merged:
                part._edits = [e for e in part._edits if e.feature != self.feature]
            raise
        self._document.headers.extend((n, v, self.feature) for n, v in self.headers)
        self._document.inline.extend(self.inline)


def _as_template(value: Value) -> Template:
    return Template.from_pieces([value])


@dataclass(frozen=True)
class CompiledDocument:
    html: Template | None
    text: Template | None
    headers: tuple[tuple[str, Template], ...]

    def stamp(self, recipient: Recipient) -> dict[str, Any]:
        return {
            "html": self.html.stamp(recipient) if self.html is not None else None,
            "text": self.text.stamp(recipient) if self.text is not None else None,
            "headers": [(name, value.stamp(recipient)) for name, value in self.headers],
        }
