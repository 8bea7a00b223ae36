"""``GET /t/o/{token}.gif``: the same 42-byte GIF for every token; valid ones record an open."""

from __future__ import annotations

import base64

import structlog
from quart import Blueprint, Response

from core import Event, current_runtime
from core.http import visitor

log = structlog.get_logger("scaisend.open_tracking")

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
        try:
            runtime.emit(
                Event(
                    type="open",
                    tenant=claims.tenant,
                    message_id=claims.message_id,
                    data={
                        "recipient_number": claims.recipient,
                        "dedupe_key": "",  # the first open of each recipient is the unique one
                        **visitor(runtime.config.trusted_proxies),
                    },
                )
            )
        except OSError as exc:
            # The recipient still gets the pixel; the failure is the operator's to see.
            log.error("open.not_recorded", message_id=claims.message_id, error=repr(exc))
    return Response(PIXEL, status=200, headers=HEADERS)
