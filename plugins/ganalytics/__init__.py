"""Google Analytics: UTM parameters appended to the destinations of links."""

from __future__ import annotations

from collections.abc import Iterable

from core import Feature, hookimpl

_UTM = {"type": ["string", "null"], "maxLength": 500, "default": None}

FEATURE = Feature(
    name="ganalytics",
    # Before click tracking, so the UTM parameters end up in the final redirect target.
    order=20,
    description="utm_* parameters on every tracked link's destination",
    settings_schema={
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "enable": {"type": "boolean", "default": False},
            "utm_source": _UTM,
            "utm_medium": _UTM,
            "utm_campaign": _UTM,
            "utm_term": _UTM,
            "utm_content": _UTM,
            "untracked_links": {
                "type": "boolean",
                "default": False,
                "description": "also tag http(s) links that click tracking leaves alone",
            },
        },
    },
)


@hookimpl
def register_features() -> Iterable[Feature]:
    return [FEATURE]
