"""Images from the tenant's library: proxied through ``/i/{image_id}`` or embedded by CID."""

from __future__ import annotations

from collections.abc import Iterable

from core import Feature, hookimpl

FEATURE = Feature(
    name="image_proxy",
    order=50,
    description="library images served from /i/{image_id} (proxy) or embedded inline (cid)",
    aliases={"image_embed_mode": "embed_mode"},
    settings_schema={
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "embed_mode": {"enum": ["proxy", "cid"], "default": "proxy"},
        },
    },
)


@hookimpl
def register_features() -> Iterable[Feature]:
    return [FEATURE]
