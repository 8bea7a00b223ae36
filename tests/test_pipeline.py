"""Compile once, stamp many: edits land exactly where they were made, nothing else changes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.pipeline import Document, EditConflict, Recipient, Template


def recipient(n: int) -> Recipient:
    return Recipient(index=n, email=f"r{n}@example.test", token=f"tok{n}")


@st.composite
def source_and_edits(draw: st.DrawFn) -> tuple[str, list[tuple[int, int, str]]]:
    """A text and non-overlapping edits (replacements and insertions) against it."""
    source = draw(st.text(max_size=200))
    cuts = sorted(draw(st.lists(st.integers(0, len(source)), max_size=12)))
    edits = []
    for start, end in zip(cuts[::2], cuts[1::2], strict=False):
        edits.append((start, end, draw(st.text(max_size=10))))
    return source, edits


@given(source_and_edits())
def test_stamp_equals_applying_the_edits(case):
    source, edits = case
    document = Document(html=source)
    staged = document.stage("feature")
    for start, end, value in edits:
        staged.html.replace(start, end, value)
    staged.commit()
    expected, cursor = [], 0
    for start, end, value in edits:
        expected += [source[cursor:start], value]
        cursor = end
    expected.append(source[cursor:])
    assert document.compile().html.stamp(recipient(0)) == "".join(expected)


@given(source_and_edits(), st.integers(1, 5))
def test_slots_are_per_recipient_and_literals_are_untouched(case, recipients):
    source, edits = case
    document = Document(html=source)
    staged = document.stage("feature")
    for start, end, _ in edits:
        staged.html.replace(start, end, lambda r, s=start: f"<{r.token}@{s}>")
    staged.commit()
    template = document.compile().html
    for n in range(recipients):
        stamped = template.stamp(recipient(n))
        expected, cursor = [], 0
        for start, end, _ in edits:
            expected += [source[cursor:start], f"<tok{n}@{start}>"]
            cursor = end
        expected.append(source[cursor:])
        assert stamped == "".join(expected)


@given(st.text(max_size=100))
def test_no_edits_means_the_authors_text(source):
    document = Document(html=source, text=source)
    compiled = document.compile()
    assert compiled.html.is_static
    assert compiled.html.stamp(recipient(0)) == source
    assert compiled.text.stamp(recipient(1)) == source


def test_insertions_at_one_offset_keep_their_order():
    document = Document(html="<body></body>")
    first = document.stage("a")
    first.html.insert(6, "A")
    first.commit()
    second = document.stage("b")
    second.html.insert(6, "B")
    second.html.insert(6, "C")
    second.commit()
    assert document.compile().html.stamp(recipient(0)) == "<body>ABC</body>"


@pytest.mark.parametrize(
    ("first", "second"),
    [((2, 6), (4, 8)), ((2, 6), (2, 6)), ((2, 6), (3, 3)), ((2, 6), (0, 10))],
)
def test_overlapping_edits_from_two_features_conflict(first, second):
    assert first == (2, 6)
    document = Document(html="0123456789")
    a = document.stage("a")
    a.html.replace(*first, "x")
    a.commit()
    b = document.stage("b")
    b.html.replace(*second, "y")
    b.html.append("!")
    with pytest.raises(EditConflict):
        b.commit()
    # The refused feature left nothing behind, not even its non-conflicting edit.
    assert document.compile().html.stamp(recipient(0)) == "01x6789"


def test_edits_touching_at_a_boundary_are_fine():
    document = Document(html="0123456789")
    a = document.stage("a")
    a.html.replace(2, 4, "x")
    a.commit()
    b = document.stage("b")
    b.html.replace(4, 6, "y")
    b.html.insert(2, "<")
    b.commit()
    assert document.compile().html.stamp(recipient(0)) == "01<xy6789"


def test_edit_outside_the_text_is_refused():
    staged = Document(html="abc").stage("a")
    with pytest.raises(EditConflict):
        staged.html.replace(2, 9, "x")


@pytest.mark.parametrize("name", ["", "X Bad", "X:Y", "Ümlaut", "X\r\nInjected"])
def test_header_names_are_validated(name):
    staged = Document(html="").stage("a")
    with pytest.raises(ValueError, match="header name"):
        staged.add_header(name, "v")


def test_header_values_cannot_inject_lines():
    staged = Document(html="").stage("a")
    with pytest.raises(ValueError, match="line break"):
        staged.add_header("X-Test", "a\r\nBcc: victim@example.test")


def test_headers_stamp_per_recipient():
    document = Document(text="hello")
    staged = document.stage("a")
    staged.add_header("X-Static", "same")
    staged.add_header("X-Token", lambda r: r.token)
    staged.commit()
    compiled = document.compile()
    assert compiled.stamp(recipient(3))["headers"] == [("X-Static", "same"), ("X-Token", "tok3")]
    assert compiled.stamp(recipient(3))["html"] is None


def test_template_from_pieces_merges_adjacent_literals():
    template = Template.from_pieces(["a", "b", lambda r: r.token, "c"])
    assert template.literals == ("ab", "c")
    assert template.stamp(recipient(7)) == "abtok7c"
