"""``POST /v3/mail/send``: the HTTP send API."""

from __future__ import annotations

import json

import anyio
import structlog
from quart import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from core.auth import AuthError, tenant_for_request
from core.runtime import current_runtime
from core.send.compose import FieldError, SendError
from core.send.service import SendService

log = structlog.get_logger("scaisend.send")

blueprint = Blueprint("send", __name__)

SERVICE = "scaisend.send"


def _errors(status: int, *errors: FieldError) -> tuple[Response, int]:
    return jsonify({"errors": [error.to_dict() for error in errors]}), status


def service() -> SendService:
    found = current_app.extensions[SERVICE]
    assert isinstance(found, SendService)
    return found


@blueprint.post("/v3/mail/send")
async def send() -> tuple[Response, int]:
    runtime = current_runtime()
    try:
        tenant = tenant_for_request(runtime, request.headers.get("Authorization"))
    except AuthError as exc:
        return _errors(exc.status, FieldError(None, exc.message))
    structlog.contextvars.bind_contextvars(tenant=tenant.id)

    try:
        raw = await request.get_data(cache=False, as_text=False)
    except RequestEntityTooLarge:
        limit = current_app.config["MAX_CONTENT_LENGTH"]
        return _errors(413, FieldError(None, f"request body larger than {limit} bytes"))
    try:
        body = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
    except UnicodeDecodeError:
        return _errors(400, FieldError(None, "the body is not UTF-8"))
    except json.JSONDecodeError as exc:
        return _errors(400, FieldError(None, f"the body is not valid JSON: {exc.msg}"))
    except RecursionError:  # nested deeper than the parser goes: no send body is
        return _errors(400, FieldError(None, "the body is nested too deeply"))

    sender = service()
    try:
        prepared = await anyio.to_thread.run_sync(sender.prepare, tenant, body)
    except SendError as exc:
        return _errors(exc.status, *exc.errors)
    if prepared.submission.sandbox:
        return jsonify({"message_id": None, "sandbox": True}), 200
    await anyio.to_thread.run_sync(sender.persist, prepared)
    current_app.add_background_task(sender.deliver, prepared)
    log.info(
        "send.accepted",
        message_id=prepared.message_id,
        recipients=len(prepared.recipients),
        features=list(prepared.features),
    )
    response = jsonify({"message_id": prepared.message_id})
    response.headers["X-Message-Id"] = prepared.message_id
    return response, 202
