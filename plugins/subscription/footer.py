"""The outgoing half: unsubscribe footer (or substitution tag) and the List-Unsubscribe headers."""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from core import InstrumentContext, Recipient, Slot, StagedDocument, StagedPart

LANDING_PATH = "/t/u/{token}"
ONE_CLICK_PATH = "/t/u/{token}/one-click"

PLACEHOLDER = re.compile(r"<%\s*%>")
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)

DEFAULT_HTML = (
    '<p style="font-size:12px;color:#666666;text-align:center;">'
    'No longer want these emails? <a href="<% %>">Unsubscribe</a>.</p>'
)
DEFAULT_TEXT = "No longer want these emails? Unsubscribe: <% %>"


def _filled(template: str, url: Slot) -> Slot:
    """A slot: ``template`` with every ``<% %>`` replaced by the recipient's URL."""
    pieces = PLACEHOLDER.split(template)

    def footer(recipient: Recipient) -> str:
        return url(recipient).join(pieces)

    return footer


def _escaped(url: Slot) -> Slot:
    def escaped(recipient: Recipient) -> str:
        return html.escape(url(recipient), quote=True)

    return escaped


def _replace_tag(part: StagedPart, tag: str, value: Slot) -> None:
    for offset in part.find_all(tag):
        if part.is_free(offset, offset + len(tag)):
            part.replace(offset, offset + len(tag), value)


def _footer_html(part: StagedPart, template: str, url: Slot) -> None:
    ends = list(_BODY_END.finditer(part.source))
    part.insert(ends[-1].start() if ends else len(part.source), _filled(template, url))


def _footer_text(part: StagedPart, template: str, url: Slot) -> None:
    source = part.source
    separator = (
        "" if not source or source.endswith("\n\n") else "\n" if source.endswith("\n") else "\n\n"
    )
    part.append(_filled(separator + template + "\n", url))


def mailto(mailbox: str) -> Slot:
    """``<mailto:...>`` for the tenant's unsubscribe mailbox, naming the recipient's token.

    Everything but the address's own safe characters is percent-encoded, so no value can
    close the angle brackets or start another header.
    """
    prefix = f"<mailto:{quote(mailbox, safe='@')}?subject=unsubscribe%20"

    def value(recipient: Recipient) -> str:
        return f"{prefix}{quote(recipient.token, safe='')}>"

    return value


def list_unsubscribe(ctx: InstrumentContext, config: Mapping[str, Any]) -> Slot:
    one_click = ctx.tracking_url(ONE_CLICK_PATH)
    mailbox = config.get("unsubscribe_mailbox")
    address = mailto(mailbox) if mailbox else None

    def value(recipient: Recipient) -> str:
        web = f"<{one_click(recipient)}>"
        return f"{web}, {address(recipient)}" if address is not None else web

    return value


def instrument_message(doc: StagedDocument, ctx: InstrumentContext) -> None:
    settings = ctx.settings
    landing = ctx.tracking_url(LANDING_PATH)
    tag = settings.get("substitution_tag")
    if tag:
        if doc.html is not None:
            _replace_tag(doc.html, tag, _escaped(landing))
        if doc.text is not None:
            _replace_tag(doc.text, tag, landing)
    else:
        if doc.html is not None:
            _footer_html(doc.html, settings.get("html") or DEFAULT_HTML, _escaped(landing))
        if doc.text is not None:
            _footer_text(doc.text, settings.get("text") or DEFAULT_TEXT, landing)
    doc.add_header(
        "List-Unsubscribe", list_unsubscribe(ctx, ctx.tenant.plugins.get(ctx.feature, {}))
    )
    doc.add_header("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")
