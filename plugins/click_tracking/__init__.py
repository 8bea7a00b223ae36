"""Click tracking: links rewritten through ``/t/c/{token}``, which redirects to the original."""

from __future__ import annotations

from collections.abc import Iterable

from core import Feature, hookimpl

FEATURE = Feature(
    name="click_tracking",
    order=30,
    description="http(s) links rewritten to /t/c/{token}?u=...; clicks recorded on redirect",
    settings_schema={
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "enable": {"type": "boolean", "default": True},
            "enable_text": {"type": "boolean", "default": False},
        },
    },
)


@hookimpl
def register_features() -> Iterable[Feature]:
    return [FEATURE]
