"""VERP envelope senders: a bounce to ``b<code>@<bounce domain>`` names the copy it is about.

The code is base32 (mail systems may change the case of a local part) of the message id, the
recipient number and an 80-bit MAC, which keeps it within the 64 characters a local part may
have and makes it unforgeable: a forged bounce cannot suppress an address.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
import struct
import uuid
from collections.abc import Sequence

from core.config import SigningKey

_CONTEXT = b"scaisend/verp/v1"
_MAC_BYTES = 10
PREFIX = "b"


# The code is 30 bytes (id, number, MAC): base32 of its first 15 bytes, whole 5-byte groups of
# the message id, is the same for every copy of a message and worked out once per message.
_HEAD_BYTES = 15


@functools.lru_cache(maxsize=64)
def _message_part(message_id: str) -> tuple[bytes, str]:
    raw_id = uuid.UUID(hex=message_id).bytes
    return raw_id, base64.b32encode(raw_id[:_HEAD_BYTES]).decode("ascii").lower()


class VerpCodec:
    def __init__(self, keys: Sequence[SigningKey]) -> None:
        self._keys = [hmac.digest(key.secret, _CONTEXT, "sha256") for key in keys]

    def _mac(self, key: bytes, body: bytes) -> bytes:
        return hmac.digest(key, body, "sha256")[:_MAC_BYTES]

    def local_part(self, message_id: str, recipient: int) -> str:
        raw_id, head = _message_part(message_id)
        body = raw_id + struct.pack(">I", recipient)
        tail = body[_HEAD_BYTES:] + self._mac(self._keys[0], body)
        return PREFIX + head + base64.b32encode(tail).decode("ascii").lower()

    def address(self, message_id: str, recipient: int, domain: str) -> str:
        return f"{self.local_part(message_id, recipient)}@{domain}"

    def parse(self, local_part: str) -> tuple[str, int] | None:
        """``(message_id, recipient)`` from a VERP local part, or ``None`` if it is not ours."""
        # ASCII only: dotless i upper-cases to "I", so a look-alike spelling would decode.
        if not local_part.isascii() or local_part[:1].lower() != PREFIX or len(local_part) != 49:
            return None
        try:
            raw = base64.b32decode(local_part[1:].upper())
        except (binascii.Error, ValueError):
            return None
        body, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        if not any(hmac.compare_digest(self._mac(key, body), mac) for key in self._keys):
            return None
        return uuid.UUID(bytes=body[:16]).hex, struct.unpack(">I", body[16:])[0]
