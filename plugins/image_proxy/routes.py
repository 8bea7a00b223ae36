"""``GET``/``HEAD /i/{image_id}``: library images, cacheable forever, loads as open signals.

Only images uploaded to a library are served; nothing here ever fetches a URL. The content
behind an id never changes (a new upload gets a new id), so the answer is ``public, immutable``
and its ``ETag`` is the SHA-256 of the bytes served.

A proxied image in a message carries the recipient's token in ``t``. The bytes do not depend
on it, but the URL does: every recipient's copy is its own cache entry, so a shared cache
(a mailbox provider's image proxy) still asks us once per recipient, and that first load is
recorded. Reloads a client answers from its own cache are not seen, as with the pixel.
"""

from __future__ import annotations

import functools

import anyio
from quart import Blueprint, Response, request

from core import current_runtime
from core.http import record_hit
from plugins.image_proxy.api import error, library
from plugins.image_proxy.library import Served, matches

blueprint = Blueprint("image_proxy", __name__)

CACHE_CONTROL = "public, max-age=31536000, immutable"
SOURCE = "image_proxy"


def _record_load(image_id: str, image: Served) -> None:
    runtime = current_runtime()
    token = request.args.get("t")
    claims = runtime.tokens.verify(token) if token else None
    if claims is None or claims.tenant != image.tenant:
        return
    # One unique open per recipient, pixel or image alike.
    record_hit(runtime, "open", claims, dedupe_key="", source=SOURCE, image_id=image_id)


@blueprint.route("/i/<image_id>", methods=["GET", "HEAD"])
async def image(image_id: str) -> Response:
    variant = request.args.get("variant")
    if variant not in (None, "thumbnail"):
        return error(400, "variant must be 'thumbnail'")
    opened = await anyio.to_thread.run_sync(
        functools.partial(
            library().fetch,
            image_id,
            thumbnail=variant == "thumbnail",
            read=request.method == "GET",
            if_none_match=request.headers.get("If-None-Match", ""),
        )
    )
    if opened.image is None:
        return error(404, "no such image")
    if not isinstance(opened.image, Served) or opened.served is None:
        return error(410, "the image was deleted")
    if request.method == "GET":
        _record_load(image_id, opened.image)

    served = opened.served
    headers = {"Cache-Control": CACHE_CONTROL, "ETag": served.etag}
    if matches(request.headers.get("If-None-Match", ""), served.etag):
        return Response(status=304, headers=headers)
    headers |= {
        "Content-Type": served.content_type,
        "X-Content-Type-Options": "nosniff",
    }
    if opened.body is None:  # HEAD: the headers a GET gets, no body
        response = Response(b"", status=200, headers=headers)
        response.headers["Content-Length"] = str(served.size)
        return response
    return Response(opened.body, status=200, headers=headers)
