"""The admin API: a tenant's tracking defaults, behind a JWT for that tenant."""

from __future__ import annotations

from typing import Any

import anyio
import structlog
from quart import Blueprint, Response, jsonify, request

from core.auth import AuthError, bearer, verify_admin_token
from core.config import Tenant
from core.runtime import Runtime, current_runtime
from core.settings import SettingsError

log = structlog.get_logger("scaisend.admin")

blueprint = Blueprint("admin", __name__)

JsonResponse = tuple[Response, int]


def _error(status: int, message: str, **extra: Any) -> JsonResponse:
    return jsonify({"error": message, **extra}), status


def _authorize(runtime: Runtime, tenant_id: str) -> Tenant | JsonResponse:
    try:
        claims = verify_admin_token(
            runtime.config.admin_jwt, bearer(request.headers.get("Authorization")), tenant_id
        )
    except AuthError as exc:
        log.info("admin.denied", tenant=tenant_id, status=exc.status, reason=exc.message)
        response, status = _error(exc.status, exc.message)
        if status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="scaisend-admin"'
        return response, status
    structlog.contextvars.bind_contextvars(tenant=tenant_id, admin=claims.subject)
    tenant = runtime.tenant(tenant_id)
    if tenant is None:
        return _error(404, f"unknown tenant {tenant_id!r}")
    return tenant


def _unstorable(value: Any) -> bool:
    """Whether ``value`` holds text no database keeps: PostgreSQL's JSON refuses NUL, and a
    lone surrogate (what JSON's ``\\ud800`` escape decodes to) is not UTF-8 at all."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return "\x00" in value
    if isinstance(value, dict):
        return any(_unstorable(key) or _unstorable(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_unstorable(item) for item in value)
    return False


def _aliased(runtime: Runtime, exc: SettingsError) -> str:
    feature, _, field = exc.field.partition(".")
    return runtime.settings.field_alias(feature, field.split(".")[0]) if field else exc.field


@blueprint.get("/api/admin/tenants/<tenant_id>/tracking")
async def get_tracking(tenant_id: str) -> JsonResponse:
    runtime = current_runtime()
    tenant = _authorize(runtime, tenant_id)
    if not isinstance(tenant, Tenant):
        return tenant
    effective = await anyio.to_thread.run_sync(runtime.effective_settings, tenant)
    return jsonify(runtime.settings.flatten(effective)), 200


@blueprint.put("/api/admin/tenants/<tenant_id>/tracking")
async def put_tracking(tenant_id: str) -> JsonResponse:
    """Additive: fields not sent keep their value."""
    runtime = current_runtime()
    tenant = _authorize(runtime, tenant_id)
    if not isinstance(tenant, Tenant):
        return tenant
    try:
        body = await request.get_json(force=True, silent=True)
    except RecursionError:  # nested deeper than the parser goes: no settings body is
        body = None
    if not isinstance(body, dict):
        return _error(400, "the body must be a JSON object of tracking settings")
    if _unstorable(body):
        return _error(400, "setting names and values must not hold NUL or lone surrogates")
    try:
        patch = runtime.settings.unflatten(body)

        def check(overrides: dict[str, Any]) -> None:
            runtime.settings.applicable(tenant, overrides, keep=patch)

        await anyio.to_thread.run_sync(runtime.overrides.merge, tenant.id, patch, check)
    except SettingsError as exc:
        field = exc.field if exc.field in body else _aliased(runtime, exc)
        return _error(400, f"{field}: {exc.message}", field=field)
    log.info("admin.tracking_updated", tenant=tenant.id, fields=sorted(body))
    effective = await anyio.to_thread.run_sync(runtime.effective_settings, tenant)
    return jsonify(runtime.settings.flatten(effective)), 200
