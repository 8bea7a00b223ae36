"""The tag scanner: exact offsets into the author's HTML, whatever shape it is in."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from core.markup import Attribute, _parse_attributes, scan_tags

SPACE = " \t\n\r\f"

PIECES = [
    *"<>/!-=\"' \n\tabhrefv:[]ifmsoend&;#x1",
    "<a ",
    "href=",
    "<!--",
    "-->",
    "<!--[if mso]>",
    "<![endif]-->",
    "<script>",
    "</script>",
]
HTMLISH = st.lists(st.sampled_from(PIECES), max_size=80).map("".join)


def tokenizer_attributes(source: str, pos: int) -> tuple[list[Attribute], int]:
    """The HTML tokenizer's attribute states (before name, name, after name, before value,
    quoted and unquoted value) stepped through one character at a time: the reference the
    scanner's single regular expression is checked against."""
    attributes: list[Attribute] = []
    length = len(source)
    while pos < length:
        while pos < length and (source[pos] in SPACE or source[pos] == "/"):
            pos += 1
        if pos >= length:
            break
        if source[pos] == ">":
            return attributes, pos + 1
        name_start = pos
        pos += 1  # a name may start with "=", as browsers allow
        while pos < length and source[pos] not in SPACE and source[pos] not in "/>=":
            pos += 1
        name = source[name_start:pos].lower()
        after_name = pos
        while pos < length and source[pos] in SPACE:
            pos += 1
        if pos < length and source[pos] == "=":
            pos += 1
            while pos < length and source[pos] in SPACE:
                pos += 1
            if pos < length and source[pos] in "\"'":
                quote = source[pos]
                close = source.find(quote, pos + 1)
                if close == -1:
                    close = length
                attributes.append(
                    Attribute(
                        name,
                        name_start,
                        min(close + 1, length),
                        pos + 1,
                        close,
                        source[pos + 1 : close],
                        quote,
                    )
                )
                pos = close + 1
            else:
                value_start = pos
                while pos < length and source[pos] not in SPACE and source[pos] != ">":
                    pos += 1
                attributes.append(
                    Attribute(name, name_start, pos, value_start, pos, source[value_start:pos], "")
                )
        else:
            attributes.append(
                Attribute(name, name_start, after_name, after_name, after_name, None, "")
            )
            pos = after_name
    return attributes, length


# Dense in what decides where attributes and values begin and end.
ATTRIBUTE_TEXT = st.text(alphabet=" \t\n\f/=\"'>ab<&", max_size=60)


@settings(max_examples=1500)
@given(st.one_of(ATTRIBUTE_TEXT, st.text(max_size=200), HTMLISH), st.integers(0, 40))
@example("a=b=c>", 0)
@example(' a="x" ="y>z">', 0)
@example("a='x'b=\"y\"/c/=d>", 0)
@example('a = "b" c>', 0)
@example('a="unclosed>', 0)
@example("a='unclosed", 0)
@example("a= >", 0)
def test_attributes_are_read_as_the_tokenizer_reads_them(source, start):
    start = min(start, len(source))
    assert _parse_attributes(source, start) == tokenizer_attributes(source, start)


@given(st.one_of(st.text(max_size=300), HTMLISH))
def test_scanning_never_raises_and_offsets_are_exact(source):
    previous_end = 0
    for tag in scan_tags(source):
        assert previous_end <= tag.start < tag.end <= len(source)
        assert source[tag.start] == "<"
        previous_end = tag.end
        for attribute in tag.attributes:
            assert tag.start < attribute.start <= attribute.value_start <= attribute.value_end
            assert attribute.value_end <= tag.end
            if attribute.raw_value is not None:
                assert source[attribute.value_start : attribute.value_end] == attribute.raw_value


def hrefs(source: str) -> list[tuple[str, str | None]]:
    return [
        (tag.name, tag.get("href").value)
        for tag in scan_tags(source)
        if tag.get("href") is not None
    ]


def test_quoting_styles_and_entities():
    source = (
        '<a href="https://a.example/?x=1&amp;y=2">a</a>'
        "<A HREF='https://b.example/'>b</A>"
        "<a href=https://c.example/path>c</a>"
        '<a title="x > y" href = "https://d.example/">d</a>'
    )
    assert hrefs(source) == [
        ("a", "https://a.example/?x=1&y=2"),
        ("a", "https://b.example/"),
        ("a", "https://c.example/path"),
        ("a", "https://d.example/"),
    ]


def test_outlook_conditional_comments_are_read_and_plain_comments_are_not():
    source = (
        '<!--[if mso]><v:roundrect href="https://vml.example/"><![endif]-->'
        '<!--[if !mso]><!--><a href="https://html.example/">go</a><!--<![endif]-->'
        '<!-- <a href="https://commented.example/">old</a> -->'
        "<script>var s = '<a href=\"https://script.example/\">';</script>"
        '<a href="https://after.example/">x</a>'
    )
    assert hrefs(source) == [
        ("v:roundrect", "https://vml.example/"),
        ("a", "https://html.example/"),
        ("a", "https://after.example/"),
    ]


def test_templates_and_odd_shapes():
    source = '<a href="<%= url %>" clicktracking=off data-x>y</a><a href="{{ link }}"><b'
    (first, second, third) = list(scan_tags(source))
    assert first.get("href").value == "<%= url %>"
    assert first.get("clicktracking").value == "off"
    assert first.get("data-x").raw_value is None
    assert second.get("href").value == "{{ link }}"
    assert third.name == "b"
    assert third.end == len(source)
