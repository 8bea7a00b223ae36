"""JSON on the hot paths (journal lines, stored event data) through orjson.

orjson refuses what the standard library accepts and an event may still hold: lone surrogates
in text and integers beyond 64 bits. Those values fall back to the standard library, whose
output orjson and the standard library both read, so every event encodes and decodes as before.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

_STDLIB_ENCODE = json.JSONEncoder(separators=(",", ":")).encode


def dumps(value: Any) -> bytes:
    """Compact JSON as UTF-8 bytes, on one line (line breaks inside text are escaped). JSON has
    no infinite or NaN numbers: they are written as ``null``."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        # Also nesting deeper than orjson goes. A type neither library knows raises TypeError
        # from here, as json.dumps would.
        return _STDLIB_ENCODE(value).encode()


def dumps_text(value: Any) -> str:
    return dumps(value).decode()


def loads(data: bytes | str) -> Any:
    """The value of a JSON document; ``json.JSONDecodeError`` if it is not one."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(data)  # what orjson refuses to read back (a lone surrogate's escape)
    except UnicodeDecodeError as exc:
        raise json.JSONDecodeError("not UTF-8", repr(data), exc.start) from exc
