"""Opaque, signed, per-recipient tokens, verified without touching the database.

Layout, before URL-safe base64 without padding::

    version (1 byte) | key id length (1) | key id | tenant length (1) | tenant
    | message id length (1) | message id | recipient index (4, big-endian) | tag (16)

The tag is HMAC-SHA256 over everything before it, truncated to 128 bits, under a key derived
from the signing key named in the token. Several keys verify, the first configured one signs,
so keys rotate by prepending a new one and later removing the old. Message ids are random, so
tokens cannot be enumerated; without the key they cannot be forged (2^-128 per guess).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from core.config import SigningKey

VERSION = 1
TAG_BYTES = 16
MAX_TOKEN_CHARS = 400
_TOKEN_CONTEXT = b"scaisend/token/v1"
_BINDING_CONTEXT = b"scaisend/binding/v1"


@dataclass(frozen=True)
class TokenClaims:
    """What a token says, once its tag has verified."""

    tenant: str
    message_id: str
    recipient: int
    key_id: str


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    """The bytes ``text`` encodes, only if ``text`` is exactly how :func:`_b64encode` writes
    them: the lenient decoder skips stray characters and ignores a last character's unused
    bits, and a changed token must never verify."""
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64encode(raw) != text:
        raise ValueError("not the canonical encoding")
    return raw


def _mac(keyed: hmac.HMAC, message: bytes) -> bytes:
    """The truncated HMAC of ``message`` from a copy of ``keyed``, whose key is set up once
    when the codec is made: ``hmac.digest`` sets it up again on every call (and OpenSSL 3
    looks the algorithm up again), several times the work on the tracking routes' path."""
    copy = keyed.copy()
    copy.update(message)
    return copy.digest()[:TAG_BYTES]


def _field(raw: bytes, pos: int) -> tuple[bytes, int]:
    length = raw[pos]
    end = pos + 1 + length
    if end > len(raw):
        raise ValueError("field runs past the token")
    return raw[pos + 1 : end], end


class TokenCodec:
    """Issues and verifies tokens, and MACs data bound to the same keys."""

    def __init__(self, keys: Sequence[SigningKey]) -> None:
        if not keys:
            raise ValueError("at least one signing key is required")
        self._token_keys: dict[bytes, hmac.HMAC] = {}
        self._binding_keys: dict[bytes, hmac.HMAC] = {}
        for key in keys:
            key_id = key.id.encode()
            if not 1 <= len(key_id) <= 16:
                raise ValueError(f"key id {key.id!r} must be 1 to 16 bytes")
            if len(key.secret) < 32:
                raise ValueError(f"signing key {key.id!r} is shorter than 32 bytes")
            self._token_keys[key_id] = hmac.new(
                hmac.digest(key.secret, _TOKEN_CONTEXT, "sha256"), digestmod="sha256"
            )
            self._binding_keys[key_id] = hmac.new(
                hmac.digest(key.secret, _BINDING_CONTEXT, "sha256"), digestmod="sha256"
            )
        self._current = keys[0].id.encode()

    @property
    def current_key_id(self) -> str:
        return self._current.decode()

    def issue(self, tenant: str, message_id: str, recipient: int) -> str:
        tenant_b = tenant.encode()
        message_b = message_id.encode()
        if len(tenant_b) > 255 or len(message_b) > 255:
            raise ValueError("tenant and message id must be at most 255 bytes")
        if not 0 <= recipient < 2**32:
            raise ValueError("recipient index out of range")
        body = b"".join(
            (
                bytes((VERSION, len(self._current))),
                self._current,
                bytes((len(tenant_b),)),
                tenant_b,
                bytes((len(message_b),)),
                message_b,
                struct.pack(">I", recipient),
            )
        )
        tag = _mac(self._token_keys[self._current], body)
        return _b64encode(body + tag)

    def verify(self, token: str) -> TokenClaims | None:
        """The claims of a valid token; ``None`` for anything else. Never raises."""
        if not isinstance(token, str) or not 0 < len(token) <= MAX_TOKEN_CHARS:
            return None
        try:
            raw = _b64decode(token)
        except (binascii.Error, ValueError):
            return None
        if len(raw) < 2 + TAG_BYTES or raw[0] != VERSION:
            return None
        body, tag = raw[:-TAG_BYTES], raw[-TAG_BYTES:]
        try:
            key_id, pos = _field(body, 1)
            keyed = self._token_keys.get(key_id)
            if keyed is None:
                return None
            expected = _mac(keyed, body)
            if not hmac.compare_digest(expected, tag):
                return None
            tenant, pos = _field(body, pos)
            message_id, pos = _field(body, pos)
            if len(body) - pos != 4:
                return None
            (recipient,) = struct.unpack(">I", body[pos:])
            return TokenClaims(tenant.decode(), message_id.decode(), recipient, key_id.decode())
        except (IndexError, ValueError, UnicodeDecodeError):
            return None

    def bind(self, *parts: str) -> str:
        """A short MAC tying ``parts`` together (e.g. a message id and a link target)."""
        return self._bind_with(self._current, parts)

    def check_binding(self, binding: str, *parts: str) -> bool:
        """Whether ``binding`` was made by :meth:`bind` over these parts with any known key."""
        if not isinstance(binding, str) or not binding.isascii():
            return False
        key_id, _, _ = binding.partition(".")
        key = key_id.encode()
        if key not in self._binding_keys:
            return False
        return hmac.compare_digest(self._bind_with(key, parts), binding)

    def _bind_with(self, key_id: bytes, parts: Sequence[str]) -> str:
        # surrogatepass: a URL taken from a request may hold lone surrogates; binding them
        # must refuse or match, never raise. Other strings encode exactly as plain UTF-8.
        message = b"\x00".join(
            hashlib.sha256(part.encode("utf-8", "surrogatepass")).digest() for part in parts
        )
        tag = _mac(self._binding_keys[key_id], message)
        return f"{key_id.decode()}.{_b64encode(tag)}"
