"""Finding tags and attribute values in HTML with exact offsets, without re-serialising it.

Email HTML is rarely well formed, and a rewriter that parses it into a tree and prints it back
changes bytes the author chose (doctypes, entities, quoting, Outlook's conditional comments).
This scanner only reports where start tags and their attributes are, so features edit just the
attribute values they mean to and every other byte stays as written.

Outlook conditional comments (``<!--[if mso]> ... <![endif]-->``) are scanned inside, because
Outlook renders them (VML buttons live there); ordinary comments, ``<script>``, ``<style>``
and the like are skipped.
"""

from __future__ import annotations

import html
import re
import string
from collections.abc import Callable, Iterator
from typing import NamedTuple

next_tag: Callable[[str, int, bool], tuple[int, int, int] | None] | None
try:
    # The same steps as the patterns below, in C: most of the time instrumenting takes.
    from core._tagscan import next_tag
except ImportError:  # built without a C compiler: the patterns find the same tags
    next_tag = None

_TAG_NAME = re.compile(r"[A-Za-z][A-Za-z0-9:_.-]*")
_RAW_TEXT = frozenset({"script", "style", "textarea", "title", "xmp", "noembed", "noframes"})
_CONDITIONAL_OPEN = re.compile(r"<!--\[if[^\]]*\]>", re.IGNORECASE)
_CONDITIONAL_MARKERS = re.compile(r"<!(?:--)?\[endif\]-->|<!-->|<!--<!\[endif\]-->", re.IGNORECASE)


class Attribute(NamedTuple):
    """One attribute as written: ``name`` lower-cased, offsets into the scanned source."""

    name: str
    start: int
    end: int
    value_start: int
    value_end: int
    raw_value: str | None
    quote: str

    @property
    def value(self) -> str | None:
        """The value with character references decoded, as a browser would read it."""
        return html.unescape(self.raw_value) if self.raw_value is not None else None


class Tag(NamedTuple):
    name: str
    start: int
    end: int
    attributes: tuple[Attribute, ...]

    def get(self, name: str) -> Attribute | None:
        for attribute in self.attributes:
            if attribute.name == name:
                return attribute
        return None


_NOT_S = r" \t\n\r\f"
_S = rf"[{_NOT_S}]"
# One attribute as the HTML tokenizer reads it: slashes and spaces before it, a name (which
# may start with "=" or a quote), then "=" and a double-quoted, single-quoted or unquoted value
# if there is one. An unclosed quote runs to the end of the source.
_ATTRIBUTE = re.compile(
    rf"[{_NOT_S}/]*+(?P<name>[^{_NOT_S}/>][^{_NOT_S}/>=]*+)"
    rf"(?:{_S}*+={_S}*+(?:\"(?P<dq>[^\"]*+)\"?|'(?P<sq>[^']*+)'?|(?P<uq>[^{_NOT_S}>]*+)))?"
)
_TAG_END = re.compile(rf"[{_NOT_S}/]*+>")


def _parse_attributes(source: str, pos: int) -> tuple[list[Attribute], int]:
    """Attributes from ``pos`` (just after the tag name) to the closing ``>``; returns the
    attributes and the offset after ``>`` (the end of the source if it never closes)."""
    attributes: list[Attribute] = []
    match = _ATTRIBUTE.match
    while (found := match(source, pos)) is not None:
        name_start = found.start("name")
        name = found.group("name").lower()
        pos = found.end()
        if (value := found.group("dq")) is not None:
            value_start = found.start("dq")
            quote = '"'
        elif (value := found.group("sq")) is not None:
            value_start = found.start("sq")
            quote = "'"
        elif (value := found.group("uq")) is not None:
            value_start = found.start("uq")
            quote = ""
        else:
            name_end = found.end("name")
            attributes.append(Attribute(name, name_start, name_end, name_end, name_end, None, ""))
            continue
        attributes.append(
            Attribute(name, name_start, pos, value_start, value_start + len(value), value, quote)
        )
    close = _TAG_END.match(source, pos)
    return attributes, close.end() if close is not None else len(source)


def _anycase(word: str) -> str:
    """``word`` matched in either ASCII case; ``re.IGNORECASE`` would also let some non-ASCII
    letters match (the long s, U+017F, for ``s``), which a tag name never contains."""
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in word)


_NAME_CHAR = "A-Za-z0-9:_.-"
# The extent of a start tag's attributes up to its ">", exactly as ``_parse_attributes`` reads
# them (a quoted value may hold ">"; an unclosed quote or tag runs to the end of the source,
# which is where a possessive run stops when it does not stop at its closing character).
# The commonest shape, blanks then name="value", is stepped over first in fewer steps of the
# matcher (a fifth of the scan's time); it reads those attributes exactly as the general form
# after it does, which takes over at the first attribute of any other shape.
_ATTRIBUTES = (
    rf"(?:{_S}++[{_NAME_CHAR}]++=\"[^\"]*+\")*+"
    rf"(?:[{_NOT_S}/]*+[^{_NOT_S}/>][^{_NOT_S}/>=]*+"
    rf"(?:{_S}*+={_S}*+(?:\"[^\"]*+\"?|'[^']*+'?|[^{_NOT_S}>]*+))?)*+"
    rf"[{_NOT_S}/]*+>?"
)
_VML_NAME = rf"{_anycase('v:')}[{_NAME_CHAR}]*+"
_LINK_NAME = rf"(?:{_anycase('area')}|{_anycase('a')}|{_VML_NAME})"
_IMAGE_NAME = rf"(?:{_anycase('img')}|{_VML_NAME})"
_RAW_TEXT_ELEMENT = "|".join(
    # After "<". The closing search is case-insensitive as in ``scan_tags``.
    rf"{_anycase(name)}(?![{_NAME_CHAR}]){_ATTRIBUTES}[^<]*+(?:<(?!(?i:/{name})[\s/>])[^<]*+)*+"
    for name in sorted(_RAW_TEXT)
)


def _name_other_than(excluded: list[str]) -> str:
    """The start of a tag name that is none of ``excluded`` (a name ending in ":" excludes
    every name it begins). Decided by the first letter where it can be: most names begin with
    a letter no excluded name begins with, and a lookahead over every excluded name at each
    tag costs more than the rest of the tag."""
    by_letter: dict[str, list[str]] = {}
    for name in excluded:
        by_letter.setdefault(name[0], []).append(name[1:])
    free = "".join(
        letter + letter.upper() for letter in string.ascii_lowercase if letter not in by_letter
    )
    choices = [f"[{free}]"]
    for letter, rests in sorted(by_letter.items()):
        after = "|".join(
            _anycase(rest) if rest.endswith(":") else rf"{_anycase(rest)}(?![{_NAME_CHAR}])"
            for rest in rests
        )
        choices.append(rf"[{letter}{letter.upper()}](?!{after})")
    return "(?:" + "|".join(choices) + ")"


def _next_named_tag(names: str, excluded: list[str]) -> re.Pattern[str]:
    """A pattern stepping over everything :func:`scan_tags` steps over or yields that is not a
    start tag named by ``names`` (a regex; ``excluded`` lists the same names, lower-cased, a
    prefix ending in ":"), then matching the next such tag's opening."""
    # Text, then each shape that starts with "<" with the text after it (one repetition per
    # tag: the matcher's loop costs as much as a short tag), tried after one test of the "<";
    # the "<!" forms keep the order ``scan_tags`` tries them in. Possessive, so the C matcher
    # never backtracks into what it has stepped over.
    skipped = (
        "[^<]*+(?:<(?:"
        r"[/?][^>]*+>?"
        rf"|{_name_other_than(excluded + sorted(_RAW_TEXT))}[{_NAME_CHAR}]*+{_ATTRIBUTES}"
        rf"|{_RAW_TEXT_ELEMENT}"
        r"|!(?:(?i:--\[if[^\]]*\]>)"
        r"|(?i:(?:--)?\[endif\]-->|-->|--<!\[endif\]-->)"
        r"|--[^-]*+(?:-(?!->)[^-]*+)*+(?:-->|\Z)"
        r"|\[endif\][^>]*+>?"
        r"|\[CDATA\[[^\]]*+(?:\](?!\]>)[^\]]*+)*+(?:\]\]>|\Z)"
        r"|[^>]*+>?)"
        r"|(?![A-Za-z])"
        ")[^<]*+)*+"
    )
    return re.compile(rf"{skipped}(?P<tag><(?P<name>{names})(?![{_NAME_CHAR}])){_ATTRIBUTES}")


_NEXT_LINK_TAG = _next_named_tag(_LINK_NAME, ["a", "area", "v:"])
_NEXT_IMAGE_TAG = _next_named_tag(_IMAGE_NAME, ["img", "v:"])


Wanted = Callable[[str], bool] | None
"""Given a found tag's text (from ``<`` to ``>``), whether to parse and give it."""


def _scan_by_pattern(source: str, pattern: re.Pattern[str], wanted: Wanted) -> Iterator[Tag]:
    pos = 0
    while (match := pattern.match(source, pos)) is not None:
        pos = match.end()  # the found tag's end: the pattern steps over its attributes too
        if wanted is not None and not wanted(source[match.start("tag") : pos]):
            continue
        attributes, pos = _parse_attributes(source, match.end("name"))
        yield Tag(match.group("name").lower(), match.start("tag"), pos, tuple(attributes))


def _scan_compiled(source: str, images: bool, wanted: Wanted) -> Iterator[Tag]:
    assert next_tag is not None
    pos = 0
    while (found := next_tag(source, pos, images)) is not None:
        start, name_end, pos = found
        if wanted is not None and not wanted(source[start:pos]):
            continue
        attributes, pos = _parse_attributes(source, name_end)
        yield Tag(source[start + 1 : name_end].lower(), start, pos, tuple(attributes))


def scan_link_tags(source: str, *, wanted: Wanted = None) -> Iterator[Tag]:
    """The ``<a>``, ``<area>`` and VML (``<v:...>``) tags of :func:`scan_tags`, found without
    parsing the attributes of any other tag: the same tags, offsets and attributes.

    With ``wanted``, only the tags whose text (from ``<`` to ``>``) it accepts are parsed and
    given: a caller that cares only about some values steps over the rest cheaply.
    """
    if next_tag is not None:
        return _scan_compiled(source, False, wanted)
    return _scan_by_pattern(source, _NEXT_LINK_TAG, wanted)


def scan_image_tags(source: str) -> Iterator[Tag]:
    """The ``<img>`` and VML (``<v:...>``) tags of :func:`scan_tags`, found the same way as
    :func:`scan_link_tags`: the same tags, offsets and attributes."""
    if next_tag is not None:
        return _scan_compiled(source, True, None)
    return _scan_by_pattern(source, _NEXT_IMAGE_TAG, None)


def scan_tags(source: str) -> Iterator[Tag]:
    """Every start tag that a mail client (Outlook included) would read, in order."""
    pos = 0
    length = len(source)
    while True:
        pos = source.find("<", pos)
        if pos == -1 or pos + 1 >= length:
            return
        if source.startswith("<!--", pos):
            opener = _CONDITIONAL_OPEN.match(source, pos)
            if opener:
                pos = opener.end()  # Outlook reads what follows: keep scanning inside
                continue
            marker = _CONDITIONAL_MARKERS.match(source, pos)
            if marker:
                pos = marker.end()
                continue
            close = source.find("-->", pos + 4)
            pos = length if close == -1 else close + 3
            continue
        if source.startswith("<![endif]", pos):
            close = source.find(">", pos)
            pos = length if close == -1 else close + 1
            continue
        if source.startswith("<![CDATA[", pos):
            close = source.find("]]>", pos)
            pos = length if close == -1 else close + 3
            continue
        following = source[pos + 1]
        if following in "!?/":
            close = source.find(">", pos)
            pos = length if close == -1 else close + 1
            continue
        name_match = _TAG_NAME.match(source, pos + 1)
        if not name_match:
            pos += 1
            continue
        name = name_match.group(0).lower()
        attributes, end = _parse_attributes(source, name_match.end())
        yield Tag(name, pos, end, tuple(attributes))
        pos = end
        if name in _RAW_TEXT:
            closing = re.compile(rf"</{re.escape(name)}[\s/>]", re.IGNORECASE).search(source, pos)
            pos = length if closing is None else closing.start()
