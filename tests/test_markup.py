"""The tag scanner: exact offsets into the author's HTML, whatever shape it is in."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from core.markup import scan_tags

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
