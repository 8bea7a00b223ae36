"""Google Analytics: UTM parameters appended to the destinations of links.

Runs before click tracking and registers a destination transform, so tracked links redirect to
the tagged URL. Links that click tracking leaves alone are tagged here directly, when the
tenant asks for it (``untracked_links``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, quote

from core import Feature, InstrumentContext, StagedDocument, hookimpl
from core.links import (
    add_destination_transform,
    attribute_text,
    has_placeholder,
    is_http,
    is_own,
    links,
    trackable,
)

UTM_FIELDS = ("utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content")
_UTM = {"type": ["string", "null"], "maxLength": 500, "default": None}

FEATURE = Feature(
    name="ganalytics",
    # Before click tracking, so the UTM parameters end up in the final redirect target.
    order=20,
    description="utm_* parameters on every tracked link's destination",
    settings_schema={
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "enable": {"type": "boolean", "default": False},
            **{name: _UTM for name in UTM_FIELDS},
            "untracked_links": {
                "type": "boolean",
                "default": False,
                "description": "also tag http(s) links that click tracking leaves alone",
            },
        },
    },
)


def utm_tagger(settings: Mapping[str, Any]) -> Callable[[str], str]:
    """Appends the configured UTM parameters the URL does not already have.

    The URL is edited as text, not parsed and rebuilt, so everything it already holds
    (parameter order, encoding, fragment) stays exactly as written.
    """
    # Encoded once per message: every link gets the same values.
    wanted = [
        (name, f"{name}={quote(str(settings[name]), safe='')}")
        for name in UTM_FIELDS
        if settings.get(name)
    ]

    def tag(url: str) -> str:
        if not wanted:
            return url
        base, hash_mark, fragment = url.partition("#")
        _, question, query = base.partition("?")
        # Parsed only when a name could be a utm_ one (percent-encoded names included).
        present = (
            {name.lower() for name, _ in parse_qsl(query, keep_blank_values=True)}
            if "%" in query or "utm_" in query.lower()
            else ()
        )
        extra = "&".join(pair for name, pair in wanted if name not in present)
        if not extra:
            return url
        if not question:
            joined = f"{base}?{extra}"
        elif query == "" or query.endswith("&"):
            joined = f"{base}{extra}"
        else:
            joined = f"{base}&{extra}"
        return joined + hash_mark + fragment

    return tag


@hookimpl
def register_features() -> Iterable[Feature]:
    return [FEATURE]


@hookimpl
def instrument(doc: StagedDocument, ctx: InstrumentContext) -> None:
    tag = utm_tagger(ctx.settings)
    add_destination_transform(ctx.state, tag)
    if not ctx.settings.get("untracked_links") or doc.html is None:
        return
    click = ctx.all_settings.get("click_tracking", {})
    clicks_on = bool(click.get("enable", False))
    part = doc.html
    for link in links(part.source):
        if clicks_on and trackable(link, ctx.tracking_base_url):
            continue  # click tracking applies the transform to this one
        if (
            not is_http(link.url)
            or has_placeholder(link.href.raw_value or "")
            or is_own(link.url, ctx.tracking_base_url)
            or not part.is_free(link.href.value_start, link.href.value_end)
        ):
            continue
        tagged = tag(link.url)
        if tagged != link.url:
            part.replace(
                link.href.value_start, link.href.value_end, attribute_text(tagged, link.href.quote)
            )
