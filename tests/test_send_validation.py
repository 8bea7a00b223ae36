"""The quick schema check of a send body never accepts what the reference validator refuses,
and a refused body still lists every problem."""

from __future__ import annotations

import fastjsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.send.compose import _QUICK_CHECK, SendError, _schema_errors, parse_submission

TEXT = st.one_of(
    st.sampled_from(["", "x", "Ann", "a\nb", "a\r", "text/html", "text/plain", "image/png"]),
    st.text(max_size=12),
)
EMAILS = st.one_of(
    st.sampled_from(["ann@example.com", "a@b.co", "bad", "a@b.co\n", "a b@c.de", "a@b.c.", ""]),
    st.text(max_size=12),
)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2, 3), st.floats(0, 2), TEXT)
ADDRESS = st.one_of(
    st.fixed_dictionaries({"email": EMAILS}, optional={"name": TEXT, "extra": SCALARS}),
    SCALARS,
)
ADDRESSES = st.one_of(st.lists(ADDRESS, max_size=3), SCALARS)
STRING_MAP = st.one_of(st.dictionaries(TEXT, st.one_of(TEXT, SCALARS), max_size=3), SCALARS)
PERSONALIZATION = st.one_of(
    st.fixed_dictionaries(
        {"to": ADDRESSES},
        optional={
            "cc": ADDRESSES,
            "subject": TEXT,
            "headers": STRING_MAP,
            "substitutions": STRING_MAP,
            "custom_args": STRING_MAP,
            "nope": SCALARS,
        },
    ),
    SCALARS,
)
CONTENT = st.fixed_dictionaries(
    {"type": st.sampled_from(["text/plain", "text/html", "text/x"]), "value": TEXT}
)
BODY = st.fixed_dictionaries(
    {},
    optional={
        "personalizations": st.one_of(st.lists(PERSONALIZATION, max_size=3), SCALARS),
        "from": ADDRESS,
        "reply_to": ADDRESS,
        "subject": TEXT,
        "content": st.one_of(st.lists(CONTENT, max_size=3), SCALARS),
        "headers": STRING_MAP,
        "categories": st.one_of(st.lists(TEXT, max_size=3), SCALARS),
        "asm": st.one_of(
            st.fixed_dictionaries(
                {"group_id": SCALARS},
                optional={"groups_to_display": st.lists(SCALARS, max_size=3)},
            ),
            SCALARS,
        ),
        "attachments": st.lists(
            st.fixed_dictionaries(
                {"content": TEXT, "filename": TEXT},
                optional={"type": TEXT, "disposition": TEXT, "content_id": TEXT},
            ),
            max_size=2,
        ),
        "tracking_settings": st.one_of(st.dictionaries(TEXT, SCALARS, max_size=2), SCALARS),
        "mail_settings": st.one_of(
            st.dictionaries(
                st.sampled_from(["sandbox_mode", "bypass_list_management", "other"]),
                st.one_of(st.fixed_dictionaries({"enable": SCALARS}), SCALARS),
                max_size=2,
            ),
            SCALARS,
        ),
        "unknown": SCALARS,
    },
)
VALID = {
    "personalizations": [{"to": [{"email": "ann@example.com", "name": "Ann"}]}],
    "from": {"email": "news@example.org"},
    "subject": "Hi",
    "content": [{"type": "text/plain", "value": "x"}],
}


def quick_accepts(body: object) -> bool:
    try:
        _QUICK_CHECK(body)
    except fastjsonschema.JsonSchemaException:
        return False
    return True


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(BODY, BODY.map(lambda extra: {**VALID, **extra}), SCALARS))
def test_the_quick_check_never_accepts_what_the_schema_refuses(body):
    if quick_accepts(body):
        assert _schema_errors(body) == []


@pytest.mark.parametrize(
    "change",
    [
        {"asm": {"group_id": True}},
        {"asm": {"group_id": 1, "groups_to_display": [1, 1]}},
        {"attachments": [{"content": "eA==", "filename": "a", "type": "text/plain\n"}]},
        {"headers": {"X-A": "a\r\nBcc: b@c.de"}},
        {"personalizations": [{"to": [{"email": "ann@example.com\n"}]}]},
        {"categories": ["a", "a"]},
    ],
)
def test_what_both_refuse_is_listed_by_the_reference_validator(change):
    body = {**VALID, **change}
    assert not quick_accepts(body)
    with pytest.raises(SendError) as refused:
        parse_submission(body)
    assert refused.value.errors == _schema_errors(body) != []


def test_every_problem_is_listed_not_just_the_first():
    body = {
        **VALID,
        "from": {"email": "bad"},
        "personalizations": [{"to": [{"email": "ann@example.com"}], "nope": 1}],
    }
    del body["content"]
    with pytest.raises(SendError) as refused:
        parse_submission(body)
    fields = {error.field for error in refused.value.errors}
    assert fields == {"content", "from.email", "personalizations.0.nope"}


def test_a_thousand_personalizations_are_accepted_with_one_copy_each():
    body = {
        **VALID,
        "personalizations": [
            {"to": [{"email": f"r{i}@example.com"}], "substitutions": {"-n-": str(i)}}
            for i in range(1000)
        ],
    }
    submission = parse_submission(body)
    assert len(submission.recipients) == 1000
    assert submission.personalizations[999].substitutions == {"-n-": "999"}
