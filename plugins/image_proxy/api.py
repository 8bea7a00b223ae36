"""The image library API: ``/v3/images``, authenticated with the tenant's API key."""

from __future__ import annotations

import functools
import re
from typing import Any

import anyio
import structlog
from quart import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from core import Tenant, current_runtime
from core.auth import AuthError, tenant_for_request
from plugins.image_proxy.library import ImageLibrary, describe
from plugins.image_proxy.validation import InvalidImage

log = structlog.get_logger("scaisend.image_proxy")

blueprint = Blueprint("image_library", __name__)

LIBRARY = "scaisend.image_library"
DEFAULT_MAX_BYTES = 5 * 1024 * 1024
MULTIPART_OVERHEAD = 64 * 1024
"""Room for the multipart headers and boundaries around the file itself."""
DEFAULT_PAGE = 50
MAX_PAGE = 500
_NUMBER = re.compile(r"[0-9]{1,12}")


def library() -> ImageLibrary:
    found = current_app.extensions.get(LIBRARY)
    if found is None:
        runtime = current_runtime()
        found = current_app.extensions[LIBRARY] = ImageLibrary(runtime.db, runtime.config.data_dir)
    assert isinstance(found, ImageLibrary)
    return found


def error(status: int, message: str) -> Response:
    response = jsonify({"error": message})
    response.status_code = status
    return response


def plugin_config(tenant: Tenant) -> Any:
    return tenant.plugins.get("image_proxy", {})


@blueprint.errorhandler(AuthError)
async def auth_error(exc: AuthError) -> Response:
    return error(exc.status, exc.message)


def _authenticate() -> Tenant:
    tenant = tenant_for_request(current_runtime(), request.headers.get("Authorization"))
    structlog.contextvars.bind_contextvars(tenant=tenant.id)
    return tenant


@blueprint.post("/v3/images")
async def upload() -> Response:
    tenant = _authenticate()
    limit = int(plugin_config(tenant).get("max_upload_bytes", DEFAULT_MAX_BYTES))
    too_large = error(413, f"image larger than {limit} bytes")
    if (request.content_length or 0) > limit + MULTIPART_OVERHEAD:
        return too_large
    if request.mimetype != "multipart/form-data":
        return error(400, "upload the image as multipart/form-data in a field named 'file'")
    try:
        files = await request.files
    except RequestEntityTooLarge:
        return too_large
    upload = files.get("file")
    if upload is None:
        return error(400, "no file in the field named 'file'")
    data = upload.read(limit + 1)
    if len(data) > limit:
        return too_large
    try:
        row = await anyio.to_thread.run_sync(
            functools.partial(
                library().add,
                tenant.id,
                data,
                filename=_clean(upload.filename),
                declared_type=upload.mimetype or None,
            )
        )
    except InvalidImage as exc:
        log.info("image.refused", reason=str(exc), size=len(data))
        return error(400, str(exc))
    log.info("image.added", image_id=row.id, content_type=row.content_type, size=row.size)
    response = jsonify(describe(row, current_runtime().config.tracking_base_url))
    response.status_code = 201
    return response


def _clean(filename: str | None) -> str | None:
    """The uploaded file's name without any directory part or control character."""
    if not filename:
        return None
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if c.isprintable())
    return name[:255] or None


def _bounded(name: str, default: int, minimum: int, maximum: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    # ASCII digits, and few of them: str.isdigit() accepts "²", which int() refuses.
    if not _NUMBER.fullmatch(raw) or not minimum <= int(raw) <= maximum:
        raise ValueError(f"{name} must be a whole number from {minimum} to {maximum}")
    return int(raw)


@blueprint.get("/v3/images")
async def list_images() -> Response:
    tenant = _authenticate()
    try:
        limit = _bounded("limit", DEFAULT_PAGE, 1, MAX_PAGE)
        offset = _bounded("offset", 0, 0, 2**31 - 1)
    except ValueError as exc:
        return error(400, str(exc))
    rows, total = await anyio.to_thread.run_sync(library().page, tenant.id, limit, offset)
    base = current_runtime().config.tracking_base_url
    return jsonify(
        {
            "images": [describe(row, base) for row in rows],
            "limit": limit,
            "offset": offset,
            "total": total,
            "next_offset": offset + limit if offset + limit < total else None,
        }
    )


@blueprint.get("/v3/images/<image_id>")
async def get_image(image_id: str) -> Response:
    tenant = _authenticate()
    row = await anyio.to_thread.run_sync(library().get, tenant.id, image_id)
    if row is None:
        return error(404, "no such image")
    return jsonify(describe(row, current_runtime().config.tracking_base_url))


@blueprint.delete("/v3/images/<image_id>")
async def delete_image(image_id: str) -> Response:
    tenant = _authenticate()
    if not await anyio.to_thread.run_sync(library().delete, tenant.id, image_id):
        return error(404, "no such image")
    log.info("image.deleted", image_id=image_id)
    return Response(status=204)
