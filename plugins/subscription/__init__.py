"""Subscription tracking: unsubscribe footer, List-Unsubscribe headers, ``/t/u/{token}``."""

from __future__ import annotations

from collections.abc import Iterable

from core import Feature, hookimpl

_TEMPLATE = {"type": ["string", "null"], "maxLength": 100_000, "default": None}

FEATURE = Feature(
    name="subscription_tracking",
    # Last of the body edits, so the footer it appends is never click-tracked.
    order=40,
    description="unsubscribe footer and List-Unsubscribe / List-Unsubscribe-Post headers",
    settings_schema={
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "enable": {"type": "boolean", "default": False},
            "html": _TEMPLATE,
            "text": _TEMPLATE,
            "landing_html": _TEMPLATE,
            "substitution_tag": {
                "type": ["string", "null"],
                "minLength": 1,
                "maxLength": 100,
                "default": None,
            },
        },
    },
)


@hookimpl
def register_features() -> Iterable[Feature]:
    return [FEATURE]
