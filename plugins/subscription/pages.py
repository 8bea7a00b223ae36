"""The recipient-facing pages: landing, confirmation, one-click. Every shown value is escaped."""

from __future__ import annotations

import re
from html import escape

from quart import Response

from plugins.subscription.subscribers import GroupState, Preferences

FORM_PLACEHOLDER = re.compile(r"<%\s*form\s*%>")
"""Where the preferences form goes in a tenant's ``landing_html``."""

_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)

SECURITY_HEADERS = {
    # No script may run, even from a tenant's own landing HTML; forms post only back here.
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src https: data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # The URL holds the recipient's token: it must not leak to linked sites.
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

_STYLE = (
    "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:36rem;"
    "margin:3rem auto;padding:0 1rem;color:#222;line-height:1.5}"
    "ul{list-style:none;padding:0}li{border-top:1px solid #ddd;padding:.75rem 0}"
    "button{padding:.4rem .9rem;margin-top:.3rem;cursor:pointer}"
    ".state{color:#666;font-size:.9rem}.notice{background:#eef6ee;padding:.6rem .9rem}"
)


def mask(email: str) -> str:
    """``a***@example.com``: enough for the recipient to recognise, little for anyone else."""
    local, at, domain = email.partition("@")
    return f"{local[:1]}***{at}{domain}"


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body>{body}</body></html>\n"
    )


def respond(body: str, status: int = 200) -> Response:
    return Response(
        body, status=status, content_type="text/html; charset=utf-8", headers=SECURITY_HEADERS
    )


def _button(action: str, label: str, group_id: int | None = None) -> str:
    hidden = f'<input type="hidden" name="action" value="{action}">'
    marks = f'data-action="{action}"'
    if group_id is not None:
        hidden += f'<input type="hidden" name="group_id" value="{group_id}">'
        marks += f' data-group="{group_id}"'
    return (
        f'<form method="post">{hidden}<button type="submit" {marks}>{escape(label)}</button></form>'
    )


def _group_item(state: GroupState) -> str:
    group = state.group
    description = f"<div>{escape(group.description)}</div>" if group.description else ""
    if state.unsubscribed:
        status, button = "Unsubscribed", _button("resubscribe_group", "Resubscribe", group.id)
    else:
        status, button = "Subscribed", _button("unsubscribe_group", "Unsubscribe", group.id)
    return (
        f'<li data-group="{group.id}"><strong>{escape(group.name)}</strong>{description}'
        f'<div class="state">{status}</div>{button}</li>'
    )


def preferences_form(email: str, prefs: Preferences, notice: str | None = None) -> str:
    parts = ['<div class="scaisend-preferences">']
    if notice:
        parts.append(f'<p class="notice" role="status">{escape(notice)}</p>')
    parts.append(f"<p>Email preferences for <strong>{escape(mask(email))}</strong></p>")
    if prefs.groups:
        parts.append("<ul>" + "".join(_group_item(state) for state in prefs.groups) + "</ul>")
    if prefs.unsubscribed_all:
        parts.append('<p class="state">You are unsubscribed from all emails.</p>')
    else:
        parts.append(_button("unsubscribe_all", "Unsubscribe from all emails"))
    parts.append("</div>")
    return "".join(parts)


def landing(template: str | None, email: str, prefs: Preferences, notice: str | None) -> str:
    """The tenant's landing HTML with the form at its placeholder, or the default page.

    A template without the placeholder gets the form before its ``</body>``.
    """
    form = preferences_form(email, prefs, notice)
    if not template:
        return _page("Email preferences", f"<h1>Email preferences</h1>{form}")
    if FORM_PLACEHOLDER.search(template):
        # A function replacement: the form is inserted verbatim, never read as a pattern.
        return FORM_PLACEHOLDER.sub(lambda _: form, template)
    ends = list(_BODY_END.finditer(template))
    at = ends[-1].start() if ends else len(template)
    return template[:at] + form + template[at:]


def one_click_page() -> str:
    return _page(
        "Unsubscribe",
        "<h1>Unsubscribe</h1><p>Confirm to stop receiving these emails.</p>"
        '<form method="post"><input type="hidden" name="List-Unsubscribe" value="One-Click">'
        '<button type="submit">Unsubscribe</button></form>',
    )


def one_click_done() -> str:
    return _page("Unsubscribed", "<h1>Unsubscribed</h1><p>You will no longer get these emails.</p>")


def problem(title: str, message: str) -> str:
    return _page(title, f"<h1>{escape(title)}</h1><p>{escape(message)}</p>")
