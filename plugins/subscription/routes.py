"""``/t/u/{token}`` (landing page and its form) and ``/t/u/{token}/one-click`` (RFC 8058)."""

from __future__ import annotations

import functools

import anyio
import structlog
from quart import Blueprint, Response, jsonify, request

from core import Runtime, current_runtime
from plugins.subscription import pages
from plugins.subscription.subscribers import (
    ACTIONS,
    Action,
    Subscriber,
    allowed_groups,
    apply,
    lookup,
    parse_group,
    preferences,
)

log = structlog.get_logger("scaisend.subscription")

blueprint = Blueprint("subscription_tracking", __name__)

NOTICES: dict[Action, str] = {
    "unsubscribe_all": "You have been unsubscribed from all emails.",
    "unsubscribe_group": "You have been unsubscribed from {name}.",
    "resubscribe_group": "You have been resubscribed to {name}.",
}
# Mail clients send exactly this; RFC 8058 allows both encodings of an HTML form.
ONE_CLICK_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


async def _subscriber(runtime: Runtime, token: str) -> Subscriber | None:
    claims = runtime.tokens.verify(token)  # no database round trip for a forged token
    if claims is None:
        return None
    return await anyio.to_thread.run_sync(lookup, runtime, claims)


def _not_found() -> Response:
    return pages.respond(
        pages.problem("Link not recognised", "This unsubscribe link is not valid."), 404
    )


async def _render(runtime: Runtime, subscriber: Subscriber, notice: str | None) -> Response:
    prefs = await anyio.to_thread.run_sync(preferences, runtime, subscriber)
    template = subscriber.settings.get("landing_html")
    return pages.respond(pages.landing(template, subscriber.email, prefs, notice))


@blueprint.get("/t/u/<token>")
async def landing(token: str) -> Response:
    runtime = current_runtime()
    subscriber = await _subscriber(runtime, token)
    if subscriber is None:
        return _not_found()
    return await _render(runtime, subscriber, None)


@blueprint.post("/t/u/<token>")
async def landing_action(token: str) -> Response:
    runtime = current_runtime()
    subscriber = await _subscriber(runtime, token)
    if subscriber is None:
        return _not_found()
    form = await request.form
    action = form.get("action", "")
    if action not in ACTIONS:
        return pages.respond(
            pages.problem("Unknown request", "Choose one of the buttons on the page."), 400
        )
    chosen: Action = ACTIONS[ACTIONS.index(action)]
    group_id: int | None = None
    name = ""
    if chosen != "unsubscribe_all":
        allowed = await anyio.to_thread.run_sync(allowed_groups, runtime, subscriber)
        group_id = parse_group(form.get("group_id"), allowed)
        if group_id is None:
            return pages.respond(
                pages.problem("Unknown group", "That group is not one you can change here."), 400
            )
        prefs = await anyio.to_thread.run_sync(preferences, runtime, subscriber)
        name = next(
            (s.group.name for s in prefs.groups if s.group.id == group_id), f"group {group_id}"
        )
    await anyio.to_thread.run_sync(
        functools.partial(apply, runtime, subscriber, chosen, group_id, "landing page")
    )
    return await _render(runtime, subscriber, NOTICES[chosen].format(name=name))


@blueprint.get("/t/u/<token>/one-click")
async def one_click_page(token: str) -> Response:
    if await _subscriber(current_runtime(), token) is None:
        return _not_found()
    return pages.respond(pages.one_click_page())


@blueprint.post("/t/u/<token>/one-click")
async def one_click(token: str) -> Response | tuple[Response, int]:
    runtime = current_runtime()
    if request.mimetype not in ONE_CLICK_TYPES:
        return jsonify({"error": "the body must be a form (RFC 8058)"}), 400
    form = await request.form
    if form.get("List-Unsubscribe") != "One-Click":
        return jsonify({"error": "the body must hold List-Unsubscribe=One-Click"}), 400
    subscriber = await _subscriber(runtime, token)
    if subscriber is None:
        return jsonify({"error": "unknown or invalid token"}), 400
    action: Action = "unsubscribe_group" if subscriber.group_id is not None else "unsubscribe_all"
    await anyio.to_thread.run_sync(
        functools.partial(apply, runtime, subscriber, action, subscriber.group_id, "one-click")
    )
    return pages.respond(pages.one_click_done())
