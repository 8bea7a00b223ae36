"""``GET /t/o/{token}.gif``: the same 42-byte GIF for every token; valid ones record an open."""

from __future__ import annotations

import base64

from quart import Blueprint, Response

from core import current_runtime
from core.http import record_hit

PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
HEADERS = {
    "Content-Type": "image/gif",
    "Cache-Control": "private, no-cache, no-store, must-revalidate",
    "Pragma": "no-cache",
}

blueprint = Blueprint("open_tracking", __name__)


@blueprint.get("/t/o/<token>.gif")
async def pixel(token: str) -> Response:
    runtime = current_runtime()
    claims = runtime.tokens.verify(token)
    if claims is not None:
        # The first open of each recipient is the unique one.
        record_hit(runtime, "open", claims, dedupe_key="")
    return Response(PIXEL, status=200, headers=HEADERS)
