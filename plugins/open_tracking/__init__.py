"""Open tracking: a 1x1 pixel per recipient, served from ``/t/o/{token}.gif``."""

from __future__ import annotations

import re
from collections.abc import Iterable

from quart import Blueprint

from core import Feature, InstrumentContext, Recipient, StagedDocument, hookimpl
from plugins.open_tracking.routes import blueprint

FEATURE = Feature(
    name="open_tracking",
    order=10,
    description="1x1 transparent GIF before </body>; opens recorded by /t/o/{token}.gif",
    settings_schema={
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "enable": {"type": "boolean", "default": True},
            "substitution_tag": {
                "type": ["string", "null"],
                "minLength": 1,
                "maxLength": 100,
                "default": None,
                "description": "put the pixel wherever this tag occurs instead of before </body>",
            },
        },
    },
)

_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)
_TAIL = 4096
PIXEL_PATH = "/t/o/{token}.gif"


def pixel_tag(url: str) -> str:
    return (
        f'<img src="{url}" width="1" height="1" alt="" border="0" '
        'style="height:1px !important;width:1px !important;border-width:0 !important;'
        'margin:0 !important;padding:0 !important;" />'
    )


@hookimpl
def register_features() -> Iterable[Feature]:
    return [FEATURE]


@hookimpl
def register_routes() -> Iterable[Blueprint]:
    return [blueprint]


@hookimpl
def instrument(doc: StagedDocument, ctx: InstrumentContext) -> None:
    html = doc.html
    if html is None:  # a text-only message has nowhere to load an image
        return
    url = ctx.tracking_url(PIXEL_PATH)

    def pixel(recipient: Recipient) -> str:
        return pixel_tag(url(recipient))

    tag = ctx.settings.get("substitution_tag")
    if tag:
        for offset in html.find_all(tag):
            if html.is_free(offset, offset + len(tag)):
                html.replace(offset, offset + len(tag), pixel)
        return
    html.insert(_last_body_end(html.source), pixel)


def _last_body_end(source: str) -> int:
    """Where the last ``</body>`` starts, or the end of ``source`` when there is none."""
    # The closing tag is nearly always near the end: look there before reading the whole body.
    tail = max(len(source) - _TAIL, 0)
    ends = list(_BODY_END.finditer(source, tail))
    if not ends and tail:
        ends = list(_BODY_END.finditer(source))
    return ends[-1].start() if ends else len(source)
