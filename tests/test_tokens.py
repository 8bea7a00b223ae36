"""Tokens: what a pixel or link URL carries, and why nobody but the server can make one."""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import secrets
import string

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from core.config import SigningKey
from core.tokens import TAG_BYTES, VERSION, TokenCodec


def key(key_id: str) -> SigningKey:
    return SigningKey(key_id, secrets.token_bytes(32))


K1 = key("k1")
K2 = key("k2")
CODEC = TokenCodec([K1])

tenants = st.text(alphabet=string.ascii_lowercase + string.digits + "_-", min_size=1, max_size=64)
message_ids = st.text(min_size=1, max_size=60)
recipients = st.integers(min_value=0, max_value=2**32 - 1)


def decode(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def resign(raw_body: bytes, signing_key: SigningKey) -> str:
    """A token for ``raw_body`` with a correct tag, as only a key holder could make it."""
    derived = hmac.digest(signing_key.secret, b"scaisend/token/v1", "sha256")
    return encode(raw_body + hmac.digest(derived, raw_body, "sha256")[:TAG_BYTES])


@given(tenants, message_ids, recipients)
def test_round_trip(tenant, message_id, recipient):
    token = CODEC.issue(tenant, message_id, recipient)
    claims = CODEC.verify(token)
    assert claims is not None
    assert (claims.tenant, claims.message_id, claims.recipient, claims.key_id) == (
        tenant,
        message_id,
        recipient,
        "k1",
    )
    # URL-safe as it stands: no escaping needed in a path segment.
    assert set(token) <= set(string.ascii_letters + string.digits + "-_")


@given(st.data())
def test_any_single_byte_flip_is_rejected(data):
    token = CODEC.issue("acme", data.draw(message_ids), data.draw(recipients))
    raw = bytearray(decode(token))
    position = data.draw(st.integers(0, len(raw) - 1))
    raw[position] ^= data.draw(st.integers(1, 255))
    assert CODEC.verify(encode(bytes(raw))) is None


@given(st.data())
def test_any_single_character_change_is_rejected(data):
    token = CODEC.issue("acme", data.draw(message_ids), data.draw(recipients))
    position = data.draw(st.integers(0, len(token) - 1))
    replacement = data.draw(st.characters().filter(lambda c: c != token[position]))
    assert CODEC.verify(token[:position] + replacement + token[position + 1 :]) is None


def test_every_character_at_the_end_but_the_issued_one_is_rejected():
    """Base64's unused low bits: another last character may decode to the same bytes."""
    token = CODEC.issue("acme", "msg-1", 7)
    for char in string.ascii_letters + string.digits + "-_":
        if char != token[-1]:
            assert CODEC.verify(token[:-1] + char) is None, char


@given(st.data())
def test_extra_characters_are_rejected(data):
    token = CODEC.issue("acme", "msg-1", 3)
    position = data.draw(st.integers(0, len(token)))
    extra = data.draw(st.text(min_size=1, max_size=4))
    assert CODEC.verify(token[:position] + extra + token[position:]) is None


def test_every_truncation_is_rejected():
    token = CODEC.issue("acme", "msg-1", 3)
    for end in range(len(token)):
        assert CODEC.verify(token[:end]) is None


def test_a_token_from_another_key_is_rejected():
    token = CODEC.issue("acme", "msg-1", 0)
    assert TokenCodec([key("k2")]).verify(token) is None
    # Same key id, different secret: an old deployment's tokens, or a guess.
    assert TokenCodec([key("k1")]).verify(token) is None


def test_another_version_is_rejected_even_with_a_valid_tag():
    raw = decode(CODEC.issue("acme", "msg-1", 0))
    body = raw[:-TAG_BYTES]
    assert CODEC.verify(resign(body, K1)) is not None  # the forging helper is faithful
    for version in (0, VERSION + 1, 255):
        assert CODEC.verify(resign(bytes((version,)) + body[1:], K1)) is None


def test_trailing_bytes_under_a_valid_tag_are_rejected():
    body = decode(CODEC.issue("acme", "msg-1", 0))[:-TAG_BYTES]
    assert CODEC.verify(resign(body + b"\x00", K1)) is None
    assert CODEC.verify(resign(body[:-1], K1)) is None


@given(st.text(max_size=500))
@example("")
@example("=" * 8)
@example("\ud800")
@example("A" * 10_000)
def test_garbage_strings_are_rejected_without_an_exception(text):
    assert CODEC.verify(text) is None


@given(st.binary(max_size=300))
def test_garbage_bytes_are_rejected_without_an_exception(raw):
    assert CODEC.verify(encode(raw)) is None


def test_non_strings_are_rejected():
    for value in (None, b"abc", 12, ["x"]):
        assert CODEC.verify(value) is None  # type: ignore[arg-type]


def test_rotation_the_newest_key_signs_and_every_key_verifies():
    old = TokenCodec([K1])
    rotated = TokenCodec([K2, K1])
    old_token = old.issue("acme", "msg-1", 5)
    new_token = rotated.issue("acme", "msg-1", 5)
    assert rotated.current_key_id == "k2"
    assert rotated.verify(new_token).key_id == "k2"
    assert rotated.verify(old_token).key_id == "k1"  # mail already sent keeps working
    assert old.verify(new_token) is None
    # Once the old key is retired, its tokens stop working.
    assert TokenCodec([K2]).verify(old_token) is None
    assert TokenCodec([K2]).verify(new_token) is not None


def test_bad_keys_are_refused_up_front():
    with pytest.raises(ValueError, match="at least one"):
        TokenCodec([])
    with pytest.raises(ValueError, match="shorter than 32"):
        TokenCodec([SigningKey("short", b"x" * 31)])
    with pytest.raises(ValueError, match="1 to 16 bytes"):
        TokenCodec([SigningKey("k" * 17, b"x" * 32)])


def test_recipients_get_distinct_tokens_with_unrelated_tags():
    tokens = [CODEC.issue("acme", "msg-1", n) for n in range(200)]
    assert len(set(tokens)) == len(tokens)
    tags = [int.from_bytes(decode(t)[-TAG_BYTES:], "big") for t in tokens]
    # Neighbours' tags differ in about half their 128 bits, as independent random values do;
    # the bounds are more than ten standard deviations out.
    distances = [bin(a ^ b).count("1") for a, b in itertools.pairwise(tags)]
    assert all(20 <= d <= 108 for d in distances), distances
    assert len({tag >> 96 for tag in tags}) == len(tags)  # not even their tops are shared


def test_counting_to_a_neighbours_token_is_rejected():
    """The recipient number is visible, but changing it without the key gives nothing."""
    raw = decode(CODEC.issue("acme", "msg-1", 41))
    body, tag = raw[:-TAG_BYTES], raw[-TAG_BYTES:]
    for neighbour in (40, 42, 0, 2**32 - 1):
        forged = body[:-4] + neighbour.to_bytes(4, "big") + tag
        assert CODEC.verify(encode(forged)) is None


def test_the_same_claims_under_two_keys_share_no_tag():
    a = decode(TokenCodec([K1]).issue("acme", "m", 0))[-TAG_BYTES:]
    b = decode(TokenCodec([SigningKey("k1", K2.secret)]).issue("acme", "m", 0))[-TAG_BYTES:]
    assert a != b


def test_click_binding_holds_only_for_the_same_message_and_url():
    binding = CODEC.bind("msg-1", "https://example.com/a?x=1")
    assert CODEC.check_binding(binding, "msg-1", "https://example.com/a?x=1")
    assert not CODEC.check_binding(binding, "msg-1", "https://example.com/a?x=2")
    assert not CODEC.check_binding(binding, "msg-1", "https://evil.example/a?x=1")
    assert not CODEC.check_binding(binding, "msg-2", "https://example.com/a?x=1")
    # Part boundaries count: ("ab", "c") is not ("a", "bc").
    assert not CODEC.check_binding(CODEC.bind("ab", "c"), "a", "bc")
    assert not TokenCodec([key("k1")]).check_binding(binding, "msg-1", "https://example.com/a?x=1")


def test_click_bindings_survive_rotation():
    binding = TokenCodec([K1]).bind("msg-1", "https://example.com/")
    rotated = TokenCodec([K2, K1])
    assert rotated.check_binding(binding, "msg-1", "https://example.com/")
    assert rotated.bind("msg-1", "https://example.com/").startswith("k2.")
    assert not TokenCodec([K2]).check_binding(binding, "msg-1", "https://example.com/")


@given(st.text(max_size=80), st.text(max_size=80))
@example("k1.", "\ud800")
@example("\udcff.x", "https://example.com/")
def test_garbage_bindings_and_urls_are_refused_without_an_exception(binding, url):
    assert not CODEC.check_binding(binding, "msg-1", url)


@given(st.text(max_size=80))
def test_any_url_round_trips_through_a_binding(url):
    assert CODEC.check_binding(CODEC.bind("msg-1", url), "msg-1", url)


def test_binding_tags_are_128_bits():
    binding = CODEC.bind("msg-1", "https://example.com/")
    key_id, _, tag = binding.partition(".")
    assert key_id == "k1"
    assert len(decode(tag)) == 16


def test_tokens_and_bindings_made_before_keep_verifying():
    """The layout and MACs are the documented ones, so tokens and links already in recipients'
    mailboxes verify whatever changes in how the server computes them."""
    body = bytes((VERSION, 2)) + b"k1" + bytes((4,)) + b"acme" + bytes((3,)) + b"m-1"
    body += (7).to_bytes(4, "big")
    token = resign(body, K1)
    assert CODEC.issue("acme", "m-1", 7) == token
    claims = CODEC.verify(token)
    assert claims is not None
    assert (claims.tenant, claims.message_id, claims.recipient) == ("acme", "m-1", 7)
    url = "https://example.com/a?b=c"
    derived = hmac.digest(K1.secret, b"scaisend/binding/v1", "sha256")
    parts = hashlib.sha256(b"m-1").digest() + b"\x00" + hashlib.sha256(url.encode()).digest()
    binding = "k1." + encode(hmac.digest(derived, parts, "sha256")[:TAG_BYTES])
    assert CODEC.bind("m-1", url) == binding
    assert CODEC.check_binding(binding, "m-1", url)
