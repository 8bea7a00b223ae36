"""A complete third-party feature: a settings schema, an ``instrument`` hook and a route.

It stamps each HTML message with a per-recipient "view in browser" link, and serves
``/example/view/<token>``, which records a ``view`` event and answers 204.
"""

from __future__ import annotations

import html
from collections.abc import Iterable

from quart import Blueprint, Response

from core import Event, Feature, InstrumentContext, StagedDocument, current_runtime, hookimpl

FEATURE = Feature(
    name="example_view_link",
    order=35,
    description="a per-recipient 'view in browser' link at the top of the HTML body",
    settings_schema={
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "enable": {"type": "boolean", "default": True},
            "label": {"type": "string", "minLength": 1, "default": "View in browser"},
        },
    },
    config_schema={
        "type": "object",
        "additionalProperties": False,
        "properties": {"event_type": {"type": "string", "default": "view"}},
    },
)

routes = Blueprint("example_view_link", __name__)


@routes.get("/example/view/<token>")
async def view(token: str) -> Response:
    runtime = current_runtime()
    claims = runtime.tokens.verify(token)
    if claims is None:
        return Response(status=404)
    tenant = runtime.tenant(claims.tenant)
    event_type = (
        tenant.plugins.get(FEATURE.name, {}).get("event_type", "view") if tenant else "view"
    )
    runtime.emit(
        Event(
            type=event_type,
            tenant=claims.tenant,
            message_id=claims.message_id,
            data={"recipient_number": claims.recipient},
        )
    )
    return Response(status=204)


@hookimpl
def register_features() -> Iterable[Feature]:
    return [FEATURE]


@hookimpl
def register_routes() -> Iterable[Blueprint]:
    return [routes]


@hookimpl
def instrument(doc: StagedDocument, ctx: InstrumentContext) -> None:
    if doc.html is None:
        return
    body = doc.html.source.lower().find("<body")
    offset = doc.html.source.find(">", body) + 1 if body != -1 else 0
    url = ctx.tracking_url("/example/view/{token}")
    label = html.escape(ctx.settings["label"])
    doc.html.insert(offset, lambda recipient: f'<p><a href="{url(recipient)}">{label}</a></p>')
