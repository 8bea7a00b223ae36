"""Click tracking: links rewritten through ``/t/c/{token}``, which redirects to the original."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from urllib.parse import quote

from quart import Blueprint

from core import Feature, InstrumentContext, Recipient, StagedDocument, StagedPart, hookimpl
from core.links import destination, has_placeholder, is_http, is_own, links
from core.links import trackable as is_trackable
from plugins.click_tracking.routes import blueprint

FEATURE = Feature(
    name="click_tracking",
    order=30,
    description="http(s) links rewritten to /t/c/{token}?u=...; clicks recorded on redirect",
    settings_schema={
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "enable": {"type": "boolean", "default": True},
            "enable_text": {"type": "boolean", "default": False},
        },
    },
)

CLICK_PATH = "/t/c/"
# A URL in plain text runs to the next space; trailing punctuation belongs to the sentence.
_TEXT_URL = re.compile(r"https?://[^\s<>\"]+", re.IGNORECASE)
_TRAILING = ".,;:!?'\")]}>"


def tracked_url(
    ctx: InstrumentContext, target: str, *, in_html: bool
) -> Callable[[Recipient], str]:
    """A slot: this recipient's click URL for ``target``, bound to the message once, here."""
    binding = ctx.tokens.bind(ctx.message_id, target)
    separator = "&amp;" if in_html else "&"
    prefix = f"{ctx.tracking_base_url}{CLICK_PATH}"
    suffix = f"?u={quote(target, safe='')}{separator}s={binding}"

    def url(recipient: Recipient) -> str:
        return prefix + recipient.token + suffix

    return url


def _rewrite_html(part: StagedPart, ctx: InstrumentContext) -> None:
    base = ctx.tracking_base_url
    for link in links(part.source):
        opt_out = link.tag.get("clicktracking")
        if opt_out is not None and link.opted_out:
            start = opt_out.start
            while start > link.tag.start and part.source[start - 1] in " \t\r\n":
                start -= 1
            if part.is_free(start, opt_out.end):
                part.replace(start, opt_out.end, "")  # SendGrid's attribute is ours alone
            continue
        if not is_trackable(link, base) or not part.is_free(
            link.href.value_start, link.href.value_end
        ):
            continue
        # The click URL holds only URL-safe characters and "&amp;", so it fits any quoting.
        slot = tracked_url(ctx, destination(ctx.state, link.url), in_html=True)
        part.replace(link.href.value_start, link.href.value_end, slot)


def _trim(url: str) -> str:
    while url and url[-1] in _TRAILING:
        if url[-1] == ")" and url.count("(") >= url.count(")"):
            break  # a balanced parenthesis is part of the URL (as in Wikipedia's)
        url = url[:-1]
    return url


def _rewrite_text(part: StagedPart, ctx: InstrumentContext) -> None:
    for match in _TEXT_URL.finditer(part.source):
        url = _trim(match.group(0))
        start, end = match.start(), match.start() + len(url)
        if (
            not is_http(url)
            or has_placeholder(url)
            or is_own(url, ctx.tracking_base_url)
            or not part.is_free(start, end)
        ):
            continue
        part.replace(start, end, tracked_url(ctx, destination(ctx.state, url), in_html=False))


@hookimpl
def register_features() -> Iterable[Feature]:
    return [FEATURE]


@hookimpl
def register_routes() -> Iterable[Blueprint]:
    return [blueprint]


@hookimpl
def instrument(doc: StagedDocument, ctx: InstrumentContext) -> None:
    if doc.html is not None:
        _rewrite_html(doc.html, ctx)
    if doc.text is not None and ctx.settings.get("enable_text"):
        _rewrite_text(doc.text, ctx)
