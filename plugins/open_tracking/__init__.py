"""Open tracking: a 1x1 pixel per recipient, served from ``/t/o/{token}.gif``."""

from __future__ import annotations

from collections.abc import Iterable

from core import Feature, hookimpl

FEATURE = Feature(
    name="open_tracking",
    order=10,
    description="1x1 transparent GIF before </body>; opens recorded by /t/o/{token}.gif",
    settings_schema={
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "enable": {"type": "boolean", "default": True},
            "substitution_tag": {
                "type": ["string", "null"],
                "minLength": 1,
                "maxLength": 100,
                "default": None,
                "description": "put the pixel wherever this tag occurs instead of before </body>",
            },
        },
    },
)


@hookimpl
def register_features() -> Iterable[Feature]:
    return [FEATURE]
