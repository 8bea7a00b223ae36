"""Images from the tenant's library: proxied through ``/i/{image_id}`` or embedded by CID.

``embed_mode: proxy`` (the default) rewrites each reference to a library image (see
:mod:`plugins.image_proxy.references`) to ``{tracking base}/i/{image_id}?t={token}``; a load
with a valid token records an ``open`` event with ``data.source: "image_proxy"``, a fallback
signal for when the pixel is blocked. ``embed_mode: cid`` attaches each referenced image
once as an inline part beside the HTML and points ``src`` at ``cid:...``; nothing is tracked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import peewee as pw
import structlog
from quart import Blueprint

from core import Feature, InstrumentContext, Recipient, StagedDocument, hookimpl
from plugins.image_proxy.api import DEFAULT_MAX_BYTES
from plugins.image_proxy.api import blueprint as library_blueprint
from plugins.image_proxy.blobs import store_for
from plugins.image_proxy.library import images_for_message
from plugins.image_proxy.models import MODELS
from plugins.image_proxy.references import references
from plugins.image_proxy.routes import blueprint as proxy_blueprint

log = structlog.get_logger("scaisend.image_proxy")

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
    config_schema={
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "max_upload_bytes": {
                "type": "integer",
                "minimum": 1,
                "default": DEFAULT_MAX_BYTES,
                "description": "largest image POST /v3/images accepts; larger answers 413",
            },
        },
    },
)

PROXY_PATH = "/i/"


@hookimpl
def register_features() -> Iterable[Feature]:
    return [FEATURE]


@hookimpl
def register_routes() -> Iterable[Blueprint]:
    return [library_blueprint, proxy_blueprint]


@hookimpl
def register_models() -> Iterable[type[pw.Model]]:
    return MODELS


def _proxy_url(ctx: InstrumentContext, image_id: str) -> Callable[[Recipient], str]:
    # Image ids and tokens are URL-safe base64: the URL fits any attribute quoting as is.
    prefix = f"{ctx.tracking_base_url}{PROXY_PATH}{image_id}?t="

    def url(recipient: Recipient) -> str:
        return prefix + recipient.token

    return url


@hookimpl
def instrument(doc: StagedDocument, ctx: InstrumentContext) -> None:
    part = doc.html
    if part is None:
        return
    found = [
        ref
        for ref in references(part.source, ctx.tracking_base_url)
        if part.is_free(ref.src.value_start, ref.src.value_end)
    ]
    images = images_for_message(ctx.tenant.id, (ref.image_id for ref in found))
    unknown = sorted({ref.image_id for ref in found} - set(images))
    if unknown:
        log.warning("image.unknown_reference", message_id=ctx.message_id, image_ids=unknown)
    embed = ctx.settings.get("embed_mode", "proxy") == "cid"
    content_ids: dict[str, str] = {}
    for ref in found:
        image = images.get(ref.image_id)
        if image is None:
            continue
        if not embed:
            part.replace(ref.src.value_start, ref.src.value_end, _proxy_url(ctx, image.id))
            continue
        if image.id not in content_ids:
            data = store_for(image.location).get(image.location)
            if data is None:
                log.warning("image.bytes_missing", image_id=image.id)
                continue
            content_ids[image.id] = f"{image.id}.{ctx.message_id}@scaisend"
            doc.add_inline(
                content_ids[image.id], image.content_type, data, image.filename or image.id
            )
        part.replace(ref.src.value_start, ref.src.value_end, f"cid:{content_ids[image.id]}")
