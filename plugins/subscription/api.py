"""The tenant management API for groups and suppression lists (SendGrid's paths and shapes).

Every route authenticates the tenant by its API key and reads or writes only that tenant's
rows. Lists take ``limit`` (1-500, default 100) and ``offset`` and answer a JSON array, with
the list's full length in ``X-Total-Count``. Errors are ``{"error": ...}``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import anyio
import structlog
from quart import Blueprint, Response, jsonify, request

from core import Runtime, Tenant, current_runtime
from core.auth import AuthError, tenant_for_request
from core.suppressions import MAX_GROUP_ID, Kind
from plugins.subscription.groups import Group, GroupStore, NoGroupIdLeft

log = structlog.get_logger("scaisend.subscription")

blueprint = Blueprint("subscription_api", __name__)

MAX_LIMIT = 500
MAX_EMAILS = 1000
_EMAIL = re.compile(r"^[^@\s\x00-\x1f\x7f<>,;:\"()\[\]\\]+@[^@\s\x00-\x1f\x7f<>,;:\"()\[\]\\]+$")
# ASCII digits only: str.isdigit() also accepts characters int() refuses ("²").
_NUMBER = re.compile(r"^[0-9]{1,12}$")
_LISTS: dict[str, Kind] = {"bounces": "bounce", "spam_reports": "spamreport"}
"""The lists behind ``/v3/suppression/{name}``; the routes' converter admits only these names."""

P = ParamSpec("P")
R = TypeVar("R")


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(message)


@blueprint.errorhandler(ApiError)
async def api_error(exc: ApiError) -> tuple[Response, int]:
    return jsonify({"error": exc.message}), exc.status


@blueprint.errorhandler(AuthError)
async def auth_error(exc: AuthError) -> tuple[Response, int]:
    return jsonify({"error": exc.message}), exc.status


def _tenant() -> Tenant:
    tenant = tenant_for_request(current_runtime(), request.headers.get("Authorization"))
    structlog.contextvars.bind_contextvars(tenant=tenant.id)
    return tenant


async def _blocking(call: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    return await anyio.to_thread.run_sync(functools.partial(call, *args, **kwargs))


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    if not _NUMBER.match(raw) or not low <= int(raw) <= high:
        raise ApiError(400, f"{name} must be a whole number from {low} to {high}")
    return int(raw)


def _paging() -> tuple[int, int]:
    return _int_arg("offset", 0, 0, 10**9), _int_arg("limit", 100, 1, MAX_LIMIT)


def _listing(items: list[Any], total: int) -> Response:
    response = jsonify(items)
    response.headers["X-Total-Count"] = str(total)
    return response


async def _json_object() -> dict[str, Any]:
    try:
        body = await request.get_json(force=True, silent=True)
    except RecursionError:  # nested deeper than the parser goes: no body this API takes
        body = None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    return body


def _storable(text: str) -> bool:
    """Whether a database keeps ``text`` as given: PostgreSQL refuses NUL, and a lone
    surrogate (what JSON's ``\\ud800`` escape decodes to) is not UTF-8 at all."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


def _email(raw: Any) -> str:
    if (
        not isinstance(raw, str)
        or len(raw) > 320
        or not _EMAIL.match(raw.strip())
        or not _storable(raw)
    ):
        raise ApiError(400, f"not an email address: {str(raw)[:100]!r}")
    return raw.strip().lower()


async def _emails() -> list[str]:
    body = await _json_object()
    emails = body.get("recipient_emails")
    if not isinstance(emails, list) or not 0 < len(emails) <= MAX_EMAILS:
        raise ApiError(400, f"recipient_emails must be a list of 1 to {MAX_EMAILS} addresses")
    return list(dict.fromkeys(_email(e) for e in emails))


def _group_fields(body: dict[str, Any], *, partial: bool) -> dict[str, Any]:
    unknown = sorted(set(body) - {"name", "description", "is_default"})
    if unknown:
        raise ApiError(400, f"unknown field {unknown[0]!r}")
    fields: dict[str, Any] = {}
    if "name" in body or not partial:
        name = body.get("name")
        if not isinstance(name, str) or not 0 < len(name.strip()) <= 100 or not _storable(name):
            raise ApiError(400, "name must be a string of 1 to 100 characters")
        fields["name"] = name.strip()
    if "description" in body:
        description = body["description"]
        if not isinstance(description, str) or len(description) > 500 or not _storable(description):
            raise ApiError(400, "description must be a string of at most 500 characters")
        fields["description"] = description
    if "is_default" in body:
        if not isinstance(body["is_default"], bool):
            raise ApiError(400, "is_default must be true or false")
        fields["is_default"] = body["is_default"]
    return fields


def _group_id(raw: str) -> int:
    if not _NUMBER.match(raw) or not 0 < int(raw) <= MAX_GROUP_ID:
        raise ApiError(404, "no such group")
    return int(raw)


async def _existing_group(runtime: Runtime, tenant: Tenant, raw: str) -> Group:
    group = await _blocking(GroupStore(runtime.db).get, tenant.id, _group_id(raw))
    if group is None:
        raise ApiError(404, "no such group")
    return group


# --- groups ------------------------------------------------------------------------------------


@blueprint.route("/v3/asm/groups", methods=["GET"])
async def list_groups() -> Response:
    tenant, runtime = _tenant(), current_runtime()
    offset, limit = _paging()
    groups, total = await _blocking(
        GroupStore(runtime.db).page, tenant.id, offset=offset, limit=limit
    )
    return _listing([g.to_dict() for g in groups], total)


@blueprint.route("/v3/asm/groups", methods=["POST"])
async def create_group() -> tuple[Response, int]:
    tenant, runtime = _tenant(), current_runtime()
    fields = _group_fields(await _json_object(), partial=False)
    try:
        group = await _blocking(
            GroupStore(runtime.db).create,
            tenant.id,
            fields["name"],
            fields.get("description", ""),
            fields.get("is_default", False),
        )
    except NoGroupIdLeft as exc:
        raise ApiError(409, f"no group id is left: {exc}") from exc
    log.info("asm.group_created", group_id=group.id)
    return jsonify(group.to_dict()), 201


@blueprint.route("/v3/asm/groups/<group_id>", methods=["GET"])
async def get_group(group_id: str) -> Response:
    tenant, runtime = _tenant(), current_runtime()
    return jsonify((await _existing_group(runtime, tenant, group_id)).to_dict())


@blueprint.route("/v3/asm/groups/<group_id>", methods=["PATCH"])
async def update_group(group_id: str) -> Response:
    tenant, runtime = _tenant(), current_runtime()
    number = _group_id(group_id)
    fields = _group_fields(await _json_object(), partial=True)
    group = await _blocking(GroupStore(runtime.db).update, tenant.id, number, fields)
    if group is None:
        raise ApiError(404, "no such group")
    return jsonify(group.to_dict())


@blueprint.route("/v3/asm/groups/<group_id>", methods=["DELETE"])
async def delete_group(group_id: str) -> Response:
    tenant, runtime = _tenant(), current_runtime()
    if not await _blocking(GroupStore(runtime.db).delete, tenant.id, _group_id(group_id)):
        raise ApiError(404, "no such group")
    log.info("asm.group_deleted", group_id=int(group_id))
    return Response(status=204)


# --- group suppressions ---------------------------------------------------------------------


@blueprint.route("/v3/asm/groups/<group_id>/suppressions", methods=["GET"])
async def list_group_suppressions(group_id: str) -> Response:
    tenant, runtime = _tenant(), current_runtime()
    group = await _existing_group(runtime, tenant, group_id)
    offset, limit = _paging()
    entries, total = await _blocking(
        runtime.suppressions.page,
        tenant.id,
        "group_unsubscribe",
        group_id=group.id,
        offset=offset,
        limit=limit,
    )
    return _listing([entry.email for entry in entries], total)


@blueprint.route("/v3/asm/groups/<group_id>/suppressions", methods=["POST"])
async def add_group_suppressions(group_id: str) -> tuple[Response, int]:
    tenant, runtime = _tenant(), current_runtime()
    group = await _existing_group(runtime, tenant, group_id)
    emails = await _emails()

    def add_all() -> None:
        for email in emails:
            runtime.suppressions.add(
                tenant.id, email, "group_unsubscribe", group_id=group.id, reason="added via API"
            )

    await _blocking(add_all)
    return jsonify({"recipient_emails": emails}), 201


@blueprint.route("/v3/asm/groups/<group_id>/suppressions/<path:email>", methods=["DELETE"])
async def delete_group_suppression(group_id: str, email: str) -> Response:
    tenant, runtime = _tenant(), current_runtime()
    group = await _existing_group(runtime, tenant, group_id)
    address = _email(email)
    if not await _blocking(
        runtime.suppressions.remove, tenant.id, address, "group_unsubscribe", group_id=group.id
    ):
        raise ApiError(404, "that address is not on this group's list")
    return Response(status=204)


# --- global unsubscribes ---------------------------------------------------------------------


@blueprint.route("/v3/asm/suppressions/global", methods=["GET"])
async def list_global() -> Response:
    tenant, runtime = _tenant(), current_runtime()
    offset, limit = _paging()
    entries, total = await _blocking(
        runtime.suppressions.page, tenant.id, "unsubscribe", offset=offset, limit=limit
    )
    return _listing([entry.to_dict() for entry in entries], total)


@blueprint.route("/v3/asm/suppressions/global", methods=["POST"])
async def add_global() -> tuple[Response, int]:
    tenant, runtime = _tenant(), current_runtime()
    emails = await _emails()

    def add_all() -> None:
        for email in emails:
            runtime.suppressions.add(tenant.id, email, "unsubscribe", reason="added via API")

    await _blocking(add_all)
    return jsonify({"recipient_emails": emails}), 201


@blueprint.route("/v3/asm/suppressions/global/<path:email>", methods=["GET"])
async def get_global(email: str) -> Response:
    tenant, runtime = _tenant(), current_runtime()
    address = _email(email)
    listed = await _blocking(runtime.suppressions.contains, tenant.id, address, "unsubscribe")
    return jsonify({"recipient_email": address} if listed else {})


@blueprint.route("/v3/asm/suppressions/global/<path:email>", methods=["DELETE"])
async def delete_global(email: str) -> Response:
    tenant, runtime = _tenant(), current_runtime()
    address = _email(email)
    if not await _blocking(runtime.suppressions.remove, tenant.id, address, "unsubscribe"):
        raise ApiError(404, "that address is not on the global unsubscribe list")
    return Response(status=204)


# --- bounces and spam reports ---------------------------------------------------------------


@blueprint.route("/v3/suppression/<any(bounces, spam_reports):name>", methods=["GET"])
async def list_reports(name: str) -> Response:
    tenant, runtime = _tenant(), current_runtime()
    kind = _LISTS[name]
    offset, limit = _paging()
    entries, total = await _blocking(
        runtime.suppressions.page, tenant.id, kind, offset=offset, limit=limit
    )
    return _listing([entry.to_dict() for entry in entries], total)


@blueprint.route("/v3/suppression/<any(bounces, spam_reports):name>/<path:email>", methods=["GET"])
async def get_report(name: str, email: str) -> Response:
    tenant, runtime = _tenant(), current_runtime()
    kind = _LISTS[name]
    entry = await _blocking(runtime.suppressions.get, tenant.id, _email(email), kind)
    if entry is None:
        raise ApiError(404, "that address is not on this list")
    return jsonify(entry.to_dict())


@blueprint.route("/v3/suppression/<any(bounces, spam_reports):name>", methods=["DELETE"])
async def delete_reports(name: str) -> Response:
    tenant, runtime = _tenant(), current_runtime()
    kind = _LISTS[name]
    body = await _json_object()
    emails = body.get("emails")
    if not isinstance(emails, list) or not 0 < len(emails) <= MAX_EMAILS:
        raise ApiError(400, f"emails must be a list of 1 to {MAX_EMAILS} addresses")
    addresses = [_email(e) for e in emails]

    def remove_all() -> None:
        for address in addresses:
            runtime.suppressions.remove(tenant.id, address, kind)

    await _blocking(remove_all)
    return Response(status=204)


@blueprint.route(
    "/v3/suppression/<any(bounces, spam_reports):name>/<path:email>", methods=["DELETE"]
)
async def delete_report(name: str, email: str) -> Response:
    tenant, runtime = _tenant(), current_runtime()
    kind = _LISTS[name]
    if not await _blocking(runtime.suppressions.remove, tenant.id, _email(email), kind):
        raise ApiError(404, "that address is not on this list")
    return Response(status=204)
