"""VERP envelope senders: a bounce address names its copy, and nobody else can make one."""

from __future__ import annotations

import string
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.config import SigningKey
from core.send.verp import VerpCodec

KEY = SigningKey("k1", b"first secret, long enough for HMAC-SHA256")
OTHER = SigningKey("k2", b"a different secret entirely, also long")
CODEC = VerpCodec([KEY])

message_ids = st.uuids(version=4).map(lambda u: u.hex)
recipients = st.integers(0, 2**32 - 1)
# What a mail system may hand back in a local part: printable ASCII.
LOCAL_CHARS = string.ascii_letters + string.digits + "!#$%&'*+-/=?^_`{|}~."


@settings(max_examples=300)
@given(message_ids, recipients)
def test_round_trip(message_id, recipient):
    local = CODEC.local_part(message_id, recipient)
    assert len(local) <= 64
    assert local == local.lower()
    assert all(c in string.ascii_lowercase + "234567" for c in local)
    assert CODEC.parse(local) == (message_id, recipient)
    # Another process with the same key reads it too.
    assert VerpCodec([KEY]).parse(local) == (message_id, recipient)


@given(message_ids, recipients, st.sampled_from(["upper", "swapcase", "title"]))
def test_a_local_part_whose_case_was_changed_still_parses(message_id, recipient, change):
    local = CODEC.local_part(message_id, recipient)
    assert CODEC.parse(getattr(local, change)()) == (message_id, recipient)


def test_the_address_is_on_the_bounce_domain():
    message_id = uuid.uuid4().hex
    address = CODEC.address(message_id, 7, "bounces.example.net")
    local, _, domain = address.partition("@")
    assert domain == "bounces.example.net"
    assert CODEC.parse(local) == (message_id, 7)


def test_distinct_copies_have_distinct_addresses():
    message_id = uuid.uuid4().hex
    locals_ = {CODEC.local_part(message_id, n) for n in range(1000)}
    locals_.add(CODEC.local_part(uuid.uuid4().hex, 0))
    assert len(locals_) == 1001


@settings(max_examples=500)
@given(message_ids, recipients, st.data())
def test_any_single_character_change_is_refused(message_id, recipient, data):
    local = CODEC.local_part(message_id, recipient)
    position = data.draw(st.integers(0, len(local) - 1), label="position")
    replacement = data.draw(
        st.sampled_from(LOCAL_CHARS).filter(lambda c: c.lower() != local[position]),
        label="replacement",
    )
    changed = local[:position] + replacement + local[position + 1 :]
    assert CODEC.parse(changed) is None


@given(message_ids, recipients, st.sampled_from(LOCAL_CHARS))
def test_a_code_with_a_character_added_or_removed_is_refused(message_id, recipient, extra):
    local = CODEC.local_part(message_id, recipient)
    assert CODEC.parse(local + extra) is None
    assert CODEC.parse(extra + local) is None
    assert CODEC.parse(local[:-1]) is None
    assert CODEC.parse(local[1:]) is None


@pytest.mark.parametrize(
    "local",
    ["", "b", "postmaster", "b" + "a" * 48, "x" + "a" * 48, "b" + "=" * 48, "b" + "é" * 48],
)
def test_strangers_are_refused(local):
    assert CODEC.parse(local) is None


@given(message_ids, recipients)
def test_a_code_made_with_another_key_is_refused(message_id, recipient):
    forged = VerpCodec([OTHER]).local_part(message_id, recipient)
    assert CODEC.parse(forged) is None


@given(message_ids, recipients)
def test_after_key_rotation_old_codes_still_parse_and_new_ones_use_the_new_key(
    message_id, recipient
):
    old_code = CODEC.local_part(message_id, recipient)
    rotated = VerpCodec([OTHER, KEY])
    assert rotated.parse(old_code) == (message_id, recipient)
    new_code = rotated.local_part(message_id, recipient)
    assert new_code != old_code
    assert rotated.parse(new_code) == (message_id, recipient)
    assert CODEC.parse(new_code) is None  # a process without the new key cannot read it
    assert VerpCodec([OTHER]).parse(old_code) is None  # nor once the old key is retired


@pytest.mark.parametrize(("ascii_char", "lookalike"), [("i", "\u0131"), ("s", "\u017f")])
def test_non_ascii_spellings_of_a_code_are_refused(ascii_char, lookalike):
    for n in range(10_000):
        local = CODEC.local_part(uuid.uuid4().hex, n)
        if ascii_char in local[1:]:
            break
    else:
        pytest.fail(f"no code with {ascii_char!r} found")
    assert CODEC.parse(local) is not None
    assert CODEC.parse(local.replace(ascii_char, lookalike, 1)) is None
