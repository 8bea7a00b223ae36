"""The link-tag scanner: exactly the link-bearing tags the full tag scanner reports."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core import markup
from core.links import is_http, link_of, links
from core.markup import Tag, scan_tags

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "html"

PIECES = [
    *"<>/!?-=\"' \n\t\f\vabhrefvsty:[]ifmsoend&;#x1\u017f\u212a",
    "<a ",
    "<A\n",
    "<area ",
    "<v:roundrect ",
    "<V:Rect ",
    "<abbr ",
    "<av ",
    "href=",
    "HREF = ",
    "<!--",
    "-->",
    "--->",
    "<!-->",
    "<!--[if mso]>",
    "<!--[IF !mso]><!-->",
    "<!--<![endif]-->",
    "<![endif]-->",
    "<![endif]>",
    "<![CDATA[",
    "]]>",
    "<script>",
    "</script>",
    "</SCRIPT ",
    "<style type='x'>",
    "</style>",
    "<title>",
    "</title/>",
    "<textarea",
    "<?xml ",
    "<img src=",
    '<td title="',
    "<p class='",
    ' style="a>b" ',
    ' x="1"y="2>"',
]
HTMLISH = st.lists(st.sampled_from(PIECES), max_size=120).map("".join)


def link_tags_of_full_scan(source: str) -> list[Tag]:
    return [
        tag for tag in scan_tags(source) if tag.name in ("a", "area") or tag.name.startswith("v:")
    ]


def image_tags_of_full_scan(source: str) -> list[Tag]:
    return [tag for tag in scan_tags(source) if tag.name == "img" or tag.name.startswith("v:")]


def by_patterns(source: str, *, images: bool = False) -> list[Tag]:
    pattern = markup._NEXT_IMAGE_TAG if images else markup._NEXT_LINK_TAG
    return list(markup._scan_by_pattern(source, pattern, None))


def compiled(source: str, *, images: bool = False) -> list[Tag]:
    if markup.next_tag is None:
        if os.environ.get("CI"):
            pytest.fail("core._tagscan is not built: .ci/run installs a C compiler")
        pytest.skip("core._tagscan is not built here (no C compiler when installed)")
    return list(markup._scan_compiled(source, images, None))


# Both ways of finding tags: the C module, which scan_link_tags uses where it was built, and
# the regular expressions it falls back to.
SCANNERS = pytest.mark.parametrize("scan", [compiled, by_patterns], ids=["C", "patterns"])


@SCANNERS
@settings(max_examples=600)
@given(source=st.one_of(st.text(max_size=300), HTMLISH))
def test_same_tags_offsets_and_attributes_as_the_full_scan(scan, source):
    assert scan(source) == link_tags_of_full_scan(source)
    assert scan(source, images=True) == image_tags_of_full_scan(source)


# Pieces of the constructs whose edges the scanners must agree on: comments and Outlook's
# conditional ones (opened but never closed, in other cases, with letters that case folding
# matches: U+0130 and U+0131 for "i", U+017F for "s"), CDATA, raw-text elements and the end
# tags that close them (followed by Unicode spaces, or not), quoting in attributes.
EDGES = [
    *"<>/!?=\"' \t\n\f\vx]-",
    "<!--[if",
    "<!--[If",
    "<!--[\u0130f",
    "<!--[\u0131F",
    " mso]",
    "]>",
    "<!--[endif]-->",
    "<!--[ENDIF]-->",
    "<!--[end\u0131f]-->",
    "<!--<![endif]-->",
    "<!--<![Endif]-->",
    "<![endif]-->",
    "<![endif]>",
    "<![ENDIF]>",
    "<!-->",
    "<!--",
    "-->",
    "<![CDATA[",
    "]]>",
    "<script>",
    "</script>",
    "</\u017fcript>",
    "</SCRIPT\u2000",
    "</script\x85",
    "</script\x0b",
    "</scripts>",
    "<style>",
    "</style/",
    "<title>",
    "</t\u0130tle>",
    "<textarea x='>'>",
    "</textarea>",
    "<xmp>",
    "</xmp>",
    "<noembed>",
    "<noframes>",
    "</noframe\u017f>",
    "<a",
    "<A",
    "<area",
    "<img",
    "<IMG",
    "<v:rect",
    "<V:x",
    "<abbr",
    "<v",
    "<imgx",
    " href=",
    " src=",
    " =",
    "<?xml",
    "</",
    "<!DOCTYPE html>",
    "\u212a",
]


@SCANNERS
@settings(max_examples=1500)
@given(source=st.lists(st.sampled_from(EDGES), max_size=60).map("".join))
def test_same_tags_at_the_edges_of_comments_raw_text_and_quotes(scan, source):
    assert scan(source) == link_tags_of_full_scan(source)
    assert scan(source, images=True) == image_tags_of_full_scan(source)


@pytest.mark.parametrize(
    "source",
    [
        '<div title="<a href=x>"><a href="https://in.example/">',
        "<style>a{} <a href=https://no.example/></style><a href=https://yes.example/>",
        "<STYLE>x</StYlE ><a href=https://after.example/>",
        "<!-- <a href=https://commented.example/> --><a href=https://live.example/>",
        "<!--[if mso]><v:roundrect href=https://vml.example/><![endif]-->",
        "<![CDATA[<a href=https://cdata.example/>]]><area href='https://area.example/'>",
        '<div a"b><a href=https://quote-in-name.example/>',
        "<\u017fcript><a href=https://not-a-script.example/>",
        '<a href="https://unclosed.example/',
        '<td title="x>y"><a href=https://after-a-quoted-gt.example/>',
        '<td a="1" title="x> <a href=https://hidden.example/>"><a href=https://real.example/>',
        "<td style='a>b' class=\"c\"><a href=https://single-quoted.example/>",
        "<script></\u017fcript><a href=https://folded-s-closes.example/>",
        "<title></T\u0130TLE><a href=https://folded-i-closes.example/>",
        "<script></SCRIPT\u2000><a href=https://unicode-space-closes.example/>",
        "<script></script\x0b><a href=https://vertical-tab-closes.example/>",
        "<script></scripts><a href=https://hidden.example/></script><a href=https://shown.example/>",
        '<p a="x" ="y><a href=https://name-starting-with-equals.example/>">',
        '<p a="x"="y><a href=https://quote-then-equals.example/>">',
        '<p a=\v"x><a href=https://vertical-tab-is-no-blank.example/>">',
        "<!--<![endif]->x<a href=https://hidden.example/>--><a href=https://shown.example/>",
        "<!--[endif]->x<a href=https://hidden.example/>--><a href=https://shown.example/>",
        "<!--[if mso]x<a href=https://hidden.example/>--><a href=https://shown.example/>",
        "<!--[\u0131f mso]><a href=https://folded-if.example/>",
    ],
)
@SCANNERS
def test_tricky_documents(scan, source):
    found = scan(source)
    assert found == link_tags_of_full_scan(source)
    assert found  # each case has a link the scanner must see


@SCANNERS
def test_every_corpus_file_gives_the_same_link_tags(scan):
    files = sorted(CORPUS.rglob("*.html"))
    assert len(files) > 100
    total = total_images = 0
    for path in files:
        source = path.read_bytes().decode("utf-8", errors="replace")
        found = scan(source)
        assert found == link_tags_of_full_scan(source), path.name
        images = scan(source, images=True)
        assert images == image_tags_of_full_scan(source), path.name
        total += len(found)
        total_images += len(images)
    assert total > 800
    assert total_images > 400


HTTP_SPELLINGS = ["http", "HTTP", "hTtP", "ht\ttp", "h\nt\rtp", "&#104;ttp", "&#x68;TTP"]
SCHEME = st.sampled_from(
    [*HTTP_SPELLINGS, "&#72;&#84;tp", "mailto:", "#", "*|UNSUB|*", "{{url}}", "javascript:", ""]
)
REST = st.sampled_from(["://x.example/", "s://y.example/?a=1&amp;b=2", ":a@x.example", ""])
QUOTE = st.sampled_from(['"', "'", ""])
LINK_TAG = st.builds(
    lambda name, before, quote, scheme, rest, after: (
        f"<{name}{before} href={quote}{scheme}{rest}{quote}{after}>"
    ),
    st.sampled_from(["a", "A", "area", "v:roundrect", "V:Rect"]),
    st.sampled_from(["", " class=x", ' title="t"', "\n style='a:b'"]),
    QUOTE,
    SCHEME,
    REST,
    st.sampled_from(["", " clicktracking=off", " ClickTracking='OFF'", " target=_blank"]),
)
LINKISH = st.lists(st.one_of(LINK_TAG, st.sampled_from(PIECES)), max_size=40).map("".join)


@settings(max_examples=600)
@given(LINKISH)
def test_links_skip_only_tags_that_can_neither_lead_to_http_nor_opt_out(source):
    found = list(links(source))
    everything = [link for tag in link_tags_of_full_scan(source) if (link := link_of(tag))]
    assert all(link in everything for link in found)
    assert found == sorted(found, key=lambda link: link.tag.start)
    for link in everything:
        if is_http(link.url) or link.tag.get("clicktracking") is not None:
            assert link in found


def test_links_of_an_equal_source_are_the_same_links():
    source = '<p><a href=" https://a.example/x\t?y=1 ">a</a><a name="top">t</a></p>'
    first = links(source)
    again = links("".join(list(source)))
    assert again == first
    assert [link.url for link in first] == ["https://a.example/x?y=1"]
