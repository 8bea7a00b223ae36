"""The link-tag scanner: exactly the link-bearing tags the full tag scanner reports."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.links import links
from core.markup import Tag, scan_image_tags, scan_link_tags, scan_tags

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
]
HTMLISH = st.lists(st.sampled_from(PIECES), max_size=120).map("".join)


def link_tags_of_full_scan(source: str) -> list[Tag]:
    return [
        tag for tag in scan_tags(source) if tag.name in ("a", "area") or tag.name.startswith("v:")
    ]


def image_tags_of_full_scan(source: str) -> list[Tag]:
    return [tag for tag in scan_tags(source) if tag.name == "img" or tag.name.startswith("v:")]


@settings(max_examples=600)
@given(st.one_of(st.text(max_size=300), HTMLISH))
def test_same_tags_offsets_and_attributes_as_the_full_scan(source):
    assert list(scan_link_tags(source)) == link_tags_of_full_scan(source)
    assert list(scan_image_tags(source)) == image_tags_of_full_scan(source)


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
    ],
)
def test_tricky_documents(source):
    found = list(scan_link_tags(source))
    assert found == link_tags_of_full_scan(source)
    assert found  # each case has a link the scanner must see


def test_every_corpus_file_gives_the_same_link_tags():
    files = sorted(CORPUS.rglob("*.html"))
    assert len(files) > 100
    total = total_images = 0
    for path in files:
        source = path.read_bytes().decode("utf-8", errors="replace")
        found = list(scan_link_tags(source))
        assert found == link_tags_of_full_scan(source), path.name
        images = list(scan_image_tags(source))
        assert images == image_tags_of_full_scan(source), path.name
        total += len(found)
        total_images += len(images)
    assert total > 800
    assert total_images > 400


def test_links_of_an_equal_source_are_the_same_links():
    source = '<p><a href=" https://a.example/x\t?y=1 ">a</a><a name="top">t</a></p>'
    first = links(source)
    again = links("".join(list(source)))
    assert again == first
    assert [link.url for link in first] == ["https://a.example/x?y=1"]
