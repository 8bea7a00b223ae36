"""The JSON Schema of a send (``POST /v3/mail/send``), in the SendGrid v3 body shape."""

from __future__ import annotations

from typing import Any

from core.suppressions import MAX_GROUP_ID

# Patterns end in \Z, not $: Python's $ also matches before a final newline, which would let
# a trailing line break through into a header.
# A pragmatic address check: one @, no spaces, angle brackets, quotes or line breaks. The
# domain may be an IDN; the envelope encodes it when the message is built.
EMAIL_PATTERN = r"^[^@\s<>()\[\],;:\"\\]{1,64}@[^@\s<>()\[\],;:\"\\]+\.[^@\s<>()\[\],;:\"\\.]+\Z"
NO_LINE_BREAKS = r"^[^\r\n]*\Z"
HEADER_NAME = r"^[!-9;-~]{1,76}\Z"
# "$" written as \x24: the same character to Python, never read as an end-of-input anchor.
MEDIA_TYPE = r"^[A-Za-z0-9!#\x24&^_.+-]+/[A-Za-z0-9!#\x24&^_.+-]+\Z"

# Headers ScaiSend writes itself; a send may not set them.
RESERVED_HEADERS = frozenset(
    name.lower()
    for name in (
        "From",
        "To",
        "Cc",
        "Bcc",
        "Subject",
        "Reply-To",
        "Date",
        "Message-ID",
        "MIME-Version",
        "Content-Type",
        "Content-Transfer-Encoding",
        "Content-Disposition",
        "Return-Path",
        "List-Unsubscribe",
        "List-Unsubscribe-Post",
        "DKIM-Signature",
        "Sender",
        "Received",
    )
)

MAX_RECIPIENTS = 10_000

_address: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["email"],
    "properties": {
        "email": {"type": "string", "maxLength": 320, "pattern": EMAIL_PATTERN},
        "name": {"type": "string", "maxLength": 256, "pattern": NO_LINE_BREAKS},
    },
}

_addresses: dict[str, Any] = {"type": "array", "items": _address, "minItems": 1, "maxItems": 1000}

_string_map: dict[str, Any] = {
    "type": "object",
    "maxProperties": 100,
    "additionalProperties": {"type": "string", "maxLength": 10_000},
}

_headers: dict[str, Any] = {
    "type": "object",
    "maxProperties": 100,
    "propertyNames": {"pattern": HEADER_NAME},
    "additionalProperties": {"type": "string", "maxLength": 998, "pattern": NO_LINE_BREAKS},
}

_custom_args: dict[str, Any] = {
    "type": "object",
    "maxProperties": 100,
    "propertyNames": {"maxLength": 100},
    "additionalProperties": {"type": "string", "maxLength": 1000},
}

_toggle: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"enable": {"type": "boolean"}},
}

SEND_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "required": ["personalizations", "from", "content"],
    "properties": {
        "personalizations": {
            "type": "array",
            "minItems": 1,
            "maxItems": 1000,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["to"],
                "properties": {
                    "to": _addresses,
                    "cc": _addresses,
                    "bcc": _addresses,
                    "subject": {"type": "string", "maxLength": 998, "pattern": NO_LINE_BREAKS},
                    "headers": _headers,
                    "substitutions": _string_map,
                    "custom_args": _custom_args,
                },
            },
        },
        "from": _address,
        "reply_to": _address,
        "subject": {"type": "string", "maxLength": 998, "pattern": NO_LINE_BREAKS},
        "content": {
            "type": "array",
            "minItems": 1,
            "maxItems": 2,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["type", "value"],
                "properties": {
                    "type": {"enum": ["text/plain", "text/html"]},
                    "value": {"type": "string", "minLength": 1},
                },
            },
        },
        "attachments": {
            "type": "array",
            "maxItems": 100,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["content", "filename"],
                "properties": {
                    "content": {"type": "string", "minLength": 1},
                    "type": {
                        "type": "string",
                        "pattern": MEDIA_TYPE,
                    },
                    "filename": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": 255,
                        "pattern": NO_LINE_BREAKS,
                    },
                    "disposition": {"enum": ["attachment", "inline"]},
                    "content_id": {
                        "type": "string",
                        "maxLength": 255,
                        "pattern": r"^[^\s<>]+\Z",
                    },
                },
            },
        },
        "headers": _headers,
        "categories": {
            "type": "array",
            "maxItems": 10,
            "uniqueItems": True,
            "items": {"type": "string", "minLength": 1, "maxLength": 255},
        },
        "custom_args": _custom_args,
        "asm": {
            "type": "object",
            "additionalProperties": False,
            "required": ["group_id"],
            "properties": {
                "group_id": {"type": "integer", "minimum": 1, "maximum": MAX_GROUP_ID},
                "groups_to_display": {
                    "type": "array",
                    "maxItems": 25,
                    "uniqueItems": True,
                    "items": {"type": "integer", "minimum": 1, "maximum": MAX_GROUP_ID},
                },
            },
        },
        # The shape of each feature's part is checked by the features' own schemas when the
        # settings layers are merged.
        "tracking_settings": {"type": "object"},
        "mail_settings": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "bypass_list_management": _toggle,
                "bypass_spam_management": _toggle,
                "bypass_bounce_management": _toggle,
                "bypass_unsubscribe_management": _toggle,
                "sandbox_mode": _toggle,
            },
        },
    },
}
