"""``GET /t/c/{token}?u=...&s=...``: record a click and redirect to where the author linked.

The token says which recipient of which message clicked; ``s`` is a MAC binding ``u`` to that
message, made when the message was compiled. So the route redirects only to destinations the
author wrote into that message (no open redirect) and needs no database to decide.
"""

from __future__ import annotations

import structlog
from quart import Blueprint, Response, jsonify, request
from werkzeug.urls import iri_to_uri

from core import Event, current_runtime
from core.http import visitor
from core.links import is_http

log = structlog.get_logger("scaisend.click_tracking")

blueprint = Blueprint("click_tracking", __name__)


def _refuse(status: int, message: str) -> Response:
    response = jsonify({"error": message})
    response.status_code = status
    return response


@blueprint.get("/t/c/<token>")
async def click(token: str) -> Response:
    runtime = current_runtime()
    claims = runtime.tokens.verify(token)
    if claims is None:
        return _refuse(404, "unknown link")
    target = request.args.get("u")
    binding = request.args.get("s")
    if not target:
        return _refuse(400, "missing destination")
    if not binding or not runtime.tokens.check_binding(binding, claims.message_id, target):
        return _refuse(400, "destination does not belong to this message")
    if not is_http(target):
        return _refuse(400, "destination is not an http(s) URL")
    try:
        runtime.emit(
            Event(
                type="click",
                tenant=claims.tenant,
                message_id=claims.message_id,
                data={
                    "recipient_number": claims.recipient,
                    "url": target,
                    "dedupe_key": target,  # one unique click per recipient and URL
                    **visitor(runtime.config.trusted_proxies),
                    "referer": request.headers.get("Referer"),
                },
            )
        )
    except OSError as exc:
        # The recipient still gets where they were going; the operator sees the failure.
        log.error("click.not_recorded", message_id=claims.message_id, error=repr(exc))
    location = target if target.isascii() else iri_to_uri(target)
    return Response(status=302, headers={"Location": location, "Cache-Control": "no-store"})
