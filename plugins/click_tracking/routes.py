"""``GET /t/c/{token}?u=...&s=...``: record a click and redirect to where the author linked.

The token says which recipient of which message clicked; ``s`` is a MAC binding ``u`` to that
message, made when the message was compiled. So the route redirects only to destinations the
author wrote into that message (no open redirect) and needs no database to decide.
"""

from __future__ import annotations

from quart import Blueprint, Response, jsonify, request
from werkzeug.urls import iri_to_uri

from core import current_runtime
from core.http import record_hit
from core.links import is_http

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
    # One unique click per recipient and URL.
    record_hit(
        runtime,
        "click",
        claims,
        dedupe_key=target,
        url=target,
        referer=request.headers.get("Referer"),
    )
    location = target if target.isascii() else iri_to_uri(target)
    # An empty body given as bytes is sent with Content-Length: 0 at once; given as nothing,
    # Quart would iterate an empty body on a worker thread and send it chunked.
    return Response(b"", status=302, headers={"Location": location, "Cache-Control": "no-store"})
