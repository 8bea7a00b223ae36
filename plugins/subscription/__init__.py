"""Subscription tracking: unsubscribe footer, List-Unsubscribe headers, ``/t/u/{token}``.

Outgoing, the footer (or the request's substitution tag) links each recipient to their landing
page, and the ``List-Unsubscribe`` / ``List-Unsubscribe-Post`` headers offer RFC 8058 one-click.
Incoming, the landing page, the one-click route and mail to the ``mailto:`` address fill the
tenant's unsubscribe lists, which the send path screens. The unsubscribe groups and the
suppression management API live here too.
"""

from __future__ import annotations

from collections.abc import Iterable

import anyio
import peewee as pw
from quart import Blueprint

from core import Feature, InstrumentContext, Runtime, StagedDocument, hookimpl
from core.inbound import InboundMessage
from core.suppressions import MAX_GROUP_ID
from plugins.subscription.api import blueprint as api_blueprint
from plugins.subscription.footer import instrument_message
from plugins.subscription.groups import GroupStore
from plugins.subscription.mail import unsubscribe_by_mail
from plugins.subscription.models import UnsubscribeGroup
from plugins.subscription.routes import blueprint as routes_blueprint

_TEMPLATE = {"type": ["string", "null"], "maxLength": 100_000, "default": None}

FEATURE = Feature(
    name="subscription_tracking",
    # Last of the body edits, so the footer it appends is never click-tracked.
    order=40,
    description="unsubscribe footer and List-Unsubscribe / List-Unsubscribe-Post headers",
    settings_schema={
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "enable": {"type": "boolean", "default": False},
            "html": _TEMPLATE,
            "text": _TEMPLATE,
            "landing_html": _TEMPLATE,
            "substitution_tag": {
                "type": ["string", "null"],
                "minLength": 1,
                "maxLength": 100,
                "default": None,
            },
        },
    },
    config_schema={
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "unsubscribe_mailbox": {
                "type": ["string", "null"],
                "maxLength": 254,
                "pattern": r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9.-]+$",
                "default": None,
                "description": "adds <mailto:...> to List-Unsubscribe",
            },
            "groups": {
                "type": "array",
                "default": [],
                "description": "unsubscribe groups, written to the database when serving starts",
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["id", "name"],
                    "properties": {
                        "id": {"type": "integer", "minimum": 1, "maximum": MAX_GROUP_ID},
                        "name": {"type": "string", "minLength": 1, "maxLength": 100},
                        "description": {"type": "string", "maxLength": 500, "default": ""},
                        "is_default": {"type": "boolean", "default": False},
                    },
                },
            },
        },
    },
)


@hookimpl
def register_features() -> Iterable[Feature]:
    return [FEATURE]


@hookimpl
def register_models() -> Iterable[type[pw.Model]]:
    return [UnsubscribeGroup]


@hookimpl
def register_routes() -> Iterable[Blueprint]:
    return [routes_blueprint, api_blueprint]


@hookimpl
def instrument(doc: StagedDocument, ctx: InstrumentContext) -> None:
    instrument_message(doc, ctx)


def _sync_groups(runtime: Runtime) -> None:
    store = GroupStore(runtime.db)
    for tenant in runtime.config.tenants.values():
        groups = tenant.plugins.get(FEATURE.name, {}).get("groups") or ()
        if groups:
            store.sync(tenant.id, groups)


@hookimpl
async def handle_inbound_mail(message: InboundMessage, runtime: Runtime) -> str | None:
    return await anyio.to_thread.run_sync(unsubscribe_by_mail, message, runtime)


@hookimpl
async def startup(runtime: Runtime) -> None:
    await anyio.to_thread.run_sync(_sync_groups, runtime)
