"""JSON on the hot paths: whatever an event may hold is written on one line and read back."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core import jsontext

# Text with lone surrogates and any code point, integers well past 64 bits, deep nesting.
FINITE = st.floats(allow_nan=False, allow_infinity=False)
SCALARS = st.none() | st.booleans() | st.integers() | FINITE | st.text()
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(VALUES)
def test_any_value_round_trips_on_one_line(value):
    line = jsontext.dumps(value)
    assert b"\n" not in line
    assert b"\r" not in line
    assert jsontext.loads(line) == value
    assert json.loads(line) == value  # plain JSON that any reader takes


def test_what_orjson_refuses_is_still_written():
    deep: list = []
    for _ in range(300):
        deep = [deep]
    for value in ({"ua": "bad \ud800 half"}, {"n": 2**80}, deep):
        assert jsontext.loads(jsontext.dumps(value)) == value


def test_numbers_json_cannot_hold_are_written_as_null():
    # Standard JSON has no Infinity or NaN (PostgreSQL refuses them in a json column).
    assert jsontext.loads(jsontext.dumps({"x": float("inf"), "y": float("nan")})) == {
        "x": None,
        "y": None,
    }


def test_what_no_json_can_hold_is_a_type_error():
    with pytest.raises(TypeError):
        jsontext.dumps({"at": object()})


@pytest.mark.parametrize("text", [b"", b"{", b'{"a": \xff}', b"nul\x00"])
def test_what_is_not_json_is_a_value_error(text):
    with pytest.raises(json.JSONDecodeError):
        jsontext.loads(text)
