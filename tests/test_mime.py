"""Compile-once MIME: stamped bodies and headers decode to exactly what was meant."""

from __future__ import annotations

import binascii
import email
import email.policy
import re
from email.header import decode_header, make_header

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from core.pipeline import Recipient, Template
from core.send.compose import Address, parse_submission
from core.send.mime import EncodedBody, address_list, compile_message, encode_header_value

# Text that exercises quoted-printable: every line-end style, trailing blanks, dot and "From "
# lines, "=" signs, long unbroken runs and non-ASCII of every width.
SPECIAL = [
    "\r\n",
    "\n",
    "\r",
    " ",
    "\t",
    "  \n",
    "\t\r\n",
    ".",
    "\n.\n",
    "\r\n.\r\n",
    "From ",
    "\nFrom x",
    "=",
    "=20",
    "=\r\n",
    "é",
    "€",
    "😀",
    "\x00",
    "a" * 75,
    "b" * 76,
    "c" * 77,
    "d" * 200,
    "ü" * 40,
]
body_text = st.lists(st.one_of(st.text(max_size=120), st.sampled_from(SPECIAL)), max_size=12).map(
    "".join
)
slot_text = st.one_of(
    st.text(max_size=80), st.lists(st.sampled_from(SPECIAL), max_size=4).map("".join)
)
# Any text a header value may hold: no CR or LF, but every other character, including the
# ones str.splitlines() also breaks at, "=?" sequences, runs of blanks and long words.
header_text = st.lists(
    st.one_of(
        st.text(
            alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="\r\n"),
            max_size=100,
        ),
        st.sampled_from(
            [" ", "  ", "\t", "=?", "?=", "=?utf-8?q?x?=", "\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"]
        ),
        st.text(alphabet="xyz", min_size=60, max_size=120),
    ),
    max_size=6,
).map("".join)
# The same with every run of blanks cut to one (runs at a fold point have their own test).
single_blank_text = header_text.map(lambda value: re.sub(" {2,}", " ", value))
header_names = st.sampled_from(["Subject", "X-A", "X-Campaign-Description-Long-Name", "filename"])


def _one_line_name(text: str) -> str:
    return text.replace("\r", " ").replace("\n", " ")


def normalised(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\r\n")


def template_of(literals: list[str], values: list[str]) -> tuple[Template, Recipient]:
    slots = tuple(
        (lambda recipient, key=str(n): recipient.substitutions[key]) for n in range(len(values))
    )
    recipient = Recipient(0, "r@example.com", "token", {str(n): v for n, v in enumerate(values)})
    return Template(tuple(literals), slots), recipient


@st.composite
def templates(draw):
    literals = draw(st.lists(body_text, min_size=1, max_size=6))
    values = draw(st.lists(slot_text, min_size=len(literals) - 1, max_size=len(literals) - 1))
    return literals, values


QP_LINE = re.compile(rb"(?:[\t\x20-\x3c\x3e-\x7e]|=[0-9A-F]{2})*=?")


def unfold(value: str) -> str:
    return re.sub(r"\r\n(?=[ \t])", "", value)


def decoded(value: str) -> str:
    return str(make_header(decode_header(unfold(value))))


def as_read(value: str) -> str:
    """A header value as a reader shows it: blanks right after the colon are not part of it."""
    return value.lstrip(" ")


# Bodies ------------------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(templates())
@example((["", "\r", "\n"], ["", "\n"]))  # a CR, then an LF from a slot, then another LF
def test_a_stamped_body_decodes_to_exactly_the_stamped_text(template):
    literals, values = template
    compiled, recipient = template_of(literals, values)
    encoded = EncodedBody.compile(compiled).render(recipient)

    assert encoded.isascii()
    assert binascii.a2b_qp(encoded).decode("utf-8") == normalised(compiled.stamp(recipient))
    lines = encoded.split(b"\r\n")
    assert lines[-1] == b"", "ends with a line break, so a boundary can follow"
    assert b"\n" not in encoded.replace(b"\r\n", b"")
    assert b"\r" not in encoded.replace(b"\r\n", b"")
    for line in lines:
        # Trailing blanks are stripped by some relays: they must be encoded.
        assert not line.endswith((b" ", b"\t"))
        assert len(line) <= 76
        # RFC 2045 syntax, stricter than a2b_qp reads: "=" only starts an escape of two
        # upper-case hex digits or ends the line as a soft break.
        assert QP_LINE.fullmatch(line), line
        assert line != b".", "a lone dot would end the message at a relay that forgets to stuff"


def test_every_recipient_gets_its_own_values_from_one_compiled_body():
    compiled, _ = template_of(["Dear ", ",\nyour code is ", ".\n"], ["", ""])
    body = EncodedBody.compile(compiled)
    ann = Recipient(0, "ann@example.com", "t0", {"0": "Ann", "1": "Ä-1"})
    bob = Recipient(1, "bob@example.com", "t1", {"0": "Bob", "1": "B=2"})
    assert binascii.a2b_qp(body.render(ann)).decode() == "Dear Ann,\r\nyour code is Ä-1.\r\n"
    assert binascii.a2b_qp(body.render(bob)).decode() == "Dear Bob,\r\nyour code is B=2.\r\n"


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(
            "Grüße aus Köln \u2013 \u201cAngebot\u201d für Sie: 5 € Rabatt\n" * 20,
            id="latin-script",
        ),
        pytest.param("東京の新しい店舗のご案内です。詳しくはこちら。\n" * 20, id="cjk"),
        pytest.param("".join(map(chr, range(0x100, 0x400))), id="hundreds-of-distinct-bytes"),
        pytest.param("\x00\x01\x0b\x0c\x7f tab\tend\t\nend \n", id="controls-and-blanks"),
    ],
)
def test_non_ascii_and_control_text_decodes_exactly(text):
    compiled, recipient = template_of([text], [])
    encoded = EncodedBody.compile(compiled).render(recipient)
    assert binascii.a2b_qp(encoded).decode("utf-8") == normalised(text)
    assert all(QP_LINE.fullmatch(line) for line in encoded.split(b"\r\n"))


@settings(max_examples=200, deadline=None)
@given(templates())
@example((["x" * 76], []))
@example((["Hello ", "!"], ["y" * 76]))
@example((["a" * 75 + " \n"], []))
def test_every_encoded_line_is_at_most_76_characters(template):
    literals, values = template
    compiled, recipient = template_of(literals, values)
    encoded = EncodedBody.compile(compiled).render(recipient)
    assert max(len(line) for line in encoded.split(b"\r\n")) <= 76


@pytest.mark.parametrize(
    ("literals", "values"),
    [
        pytest.param(["Regards\r", ""], ["\nAnn"], id="literal-cr-then-value-lf"),
        pytest.param(["Hello ", "\nBye"], ["Ann\r"], id="value-cr-then-literal-lf"),
        pytest.param(["Regards\r", "\nAnn"], [""], id="across-an-empty-value"),
    ],
)
def test_a_crlf_split_across_a_slot_stays_one_line_break(literals, values):
    compiled, recipient = template_of(literals, values)
    encoded = EncodedBody.compile(compiled).render(recipient)
    assert binascii.a2b_qp(encoded).decode() == normalised(compiled.stamp(recipient))


# Headers -----------------------------------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(header_names, single_blank_text)
def test_an_encoded_header_value_decodes_to_exactly_the_value(name, value):
    encoded = encode_header_value(name, value)
    assert encoded.isascii()
    assert "\n" not in encoded.replace("\r\n ", "").replace("\r\n\t", "")
    assert "\r" not in encoded.replace("\r\n ", "").replace("\r\n\t", "")
    assert as_read(decoded(encoded)) == as_read(value)


@settings(max_examples=300, deadline=None)
@given(header_names, header_text)
@example("Subject", "x" * 100)
def test_an_encoded_header_never_has_a_line_over_78_characters(name, value):
    lines = f"{name}: {encode_header_value(name, value)}".split("\r\n")
    assert max(len(line) for line in lines) <= 78


@settings(max_examples=300, deadline=None)
@given(header_names, header_text)
@example("Subject", "0" * 68 + "   ")
@example("Subject", "Sale! " + "x" * 63 + "   Now")
def test_runs_of_blanks_survive_folding(name, value):
    encoded = encode_header_value(name, value)
    assert as_read(decoded(encoded)) == as_read(value)
    # RFC 5322: no line of a folded header may consist of white space only.
    assert all(line.strip(" \t") for line in encoded.split("\r\n")[1:])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=256).map(_one_line_name), min_size=1, max_size=3))
@example(["\u00e9" * 100])
def test_address_headers_fold_to_78_characters(names):
    addresses = [Address(f"r{n}@example.com", name or None) for n, name in enumerate(names)]
    lines = f"To: {address_list('To', addresses)}".split("\r\n")
    assert max(len(line) for line in lines) <= 78
    parsed = email.message_from_bytes(
        f"To: {address_list('To', addresses)}\r\n\r\n".encode(), policy=email.policy.default
    )
    assert [a.addr_spec for a in parsed["To"].addresses] == [a.email for a in addresses]


@pytest.mark.parametrize(
    "value", ["=?utf-8?q?Caf=C3=A9?=", "Re: =?iso-8859-1?b?SGk=?= pricing", "x =?us-ascii?q?y?= z"]
)
def test_text_that_looks_like_an_encoded_word_is_not_decoded_by_the_reader(value):
    assert decoded(encode_header_value("Subject", value)) == value


@pytest.mark.parametrize("value", ["Grüße\u2028heute", "é\x1c", "\x85Sale \u2013 50 %", "ß\x0bx"])
def test_unicode_line_separators_in_a_header_value_survive_encoding(value):
    assert decoded(encode_header_value("Subject", value)) == value


# Whole messages ----------------------------------------------------------------------------


def submission_for(text: str | None, html: str | None):
    content = [
        {"type": kind, "value": value}
        for kind, value in (("text/plain", text), ("text/html", html))
        if value is not None
    ]
    return parse_submission(
        {
            "personalizations": [{"to": [{"email": "ann@example.com", "name": "Änn"}]}],
            "from": {"email": "news@example.org", "name": "News"},
            "subject": "the subject template below is what is sent",
            "content": content,
        }
    )


optional_template = st.one_of(st.none(), templates().filter(lambda t: "".join(t[0]) != ""))


@settings(max_examples=200, deadline=None)
@given(
    subject=st.tuples(
        st.lists(single_blank_text, min_size=1, max_size=3), st.lists(single_blank_text)
    ),
    text=optional_template,
    html=optional_template,
)
def test_a_compiled_message_parses_to_the_exact_subject_and_bodies(subject, text, html):
    assume(text is not None or html is not None)
    subject_literals, subject_values = subject
    subject_values = (subject_values + [""] * len(subject_literals))[: len(subject_literals) - 1]
    values = {}
    compiled = {}
    for kind, template in (("s", (subject_literals, subject_values)), ("t", text), ("h", html)):
        if template is None:
            compiled[kind] = None
            continue
        literals, slot_values = template
        compiled[kind] = Template(
            tuple(literals),
            tuple(
                (lambda recipient, key=f"{kind}{n}": recipient.substitutions[key])
                for n in range(len(slot_values))
            ),
        )
        values.update({f"{kind}{n}": v for n, v in enumerate(slot_values)})
    recipient = Recipient(0, "ann@example.com", "token", values)
    submission = submission_for(
        "".join(text[0]) if text else None,
        "".join(html[0]) if html else None,
    )

    raw = compile_message(
        submission,
        submission.personalizations[0],
        message_id="0123456789abcdef0123456789abcdef",
        id_domain="example.org",
        html=compiled["h"],
        text=compiled["t"],
        subject=compiled["s"],
        feature_headers=(),
    ).render(recipient)

    assert raw.isascii()
    assert raw.count(b"\n") == raw.count(b"\r\n") == raw.count(b"\r")
    message = email.message_from_bytes(raw, policy=email.policy.default)
    for part in message.walk():
        assert not part.defects
    assert message["MIME-Version"] == "1.0"
    assert message["Message-ID"] == "<0123456789abcdef0123456789abcdef.0@example.org>"
    assert str(message["To"]) == "Änn <ann@example.com>"
    head = raw.split(b"\r\n\r\n", 1)[0] + b"\r\n"
    (subject_line,) = re.findall(rb"^Subject: (.*(?:\r\n[ \t].*)*)\r\n", head, re.MULTILINE)
    assert as_read(decoded(subject_line.decode())) == as_read(compiled["s"].stamp(recipient))

    expected = {
        kind: normalised(compiled[key].stamp(recipient))
        for kind, key in (("plain", "t"), ("html", "h"))
        if compiled[key] is not None
    }
    if len(expected) == 2:
        assert message.get_content_type() == "multipart/alternative"
        assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]
    else:
        assert message.get_content_type() == f"text/{next(iter(expected))}"
    for kind, body in expected.items():
        part = message.get_body((kind,))
        assert part["Content-Transfer-Encoding"] == "quoted-printable"
        assert part.get_content_charset() == "utf-8"
        assert part.get_content() == body


# Any filename the send API accepts: no line breaks, up to 255 characters of any script, quotes,
# backslashes, percent signs, RFC 2231's own "*" and "'", and long runs that need continuations.
filenames = st.lists(
    st.one_of(
        st.text(
            alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="\r\n"),
            min_size=1,
            max_size=80,
        ),
        st.sampled_from(['"', "\\", "%", "%41", "*", "'", "utf-8''", " ", ";", "報告書", "😀"]),
        st.text(alphabet="xyz", min_size=60, max_size=255),
    ),
    min_size=1,
    max_size=6,
).map(lambda parts: "".join(parts)[:255].replace("\x85", " ").replace("\u2028", " "))


@settings(max_examples=300, deadline=None)
@given(filenames.filter(lambda name: name.strip() == name and name.splitlines() == [name]))
@example("報告書" * 40 + ".pdf")
@example("x" * 255)
@example('a "quoted" \\ name.txt')
def test_an_attachment_filename_survives_with_every_header_line_within_78(filename):
    submission = parse_submission(
        {
            "personalizations": [{"to": [{"email": "ann@example.com"}]}],
            "from": {"email": "news@example.org"},
            "subject": "Files",
            "content": [{"type": "text/plain", "value": "See attached"}],
            "attachments": [{"content": "aGk=", "filename": filename}],
        }
    )
    raw = compile_message(
        submission,
        submission.personalizations[0],
        message_id="0123456789abcdef0123456789abcdef",
        id_domain="example.org",
        html=None,
        text=Template(("See attached",), ()),
        subject=Template(("Files",), ()),
        feature_headers=(),
    ).render(Recipient(0, "ann@example.com", "token"))

    assert raw.isascii()
    assert max(len(line) for line in raw.split(b"\r\n")) <= 78
    message = email.message_from_bytes(raw, policy=email.policy.default)
    _, attachment = message.iter_parts()
    # The header objects, not get_filename(): that one also strips quotes around the decoded
    # value, so a file named '"x"' would read as 'x' however it was written.
    assert attachment["Content-Disposition"].params["filename"] == filename
    assert attachment["Content-Type"].params["name"] == filename
    assert attachment.get_payload(decode=True) == b"hi"
