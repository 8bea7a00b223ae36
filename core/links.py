"""Links in outgoing HTML, as the features that rewrite them (click tracking, UTM) see them.

Which links are tracked is decided here once, so every feature agrees on it: http(s) hrefs of
``<a>``, ``<area>`` and Outlook's VML shapes, except those carrying a placeholder the sender
substitutes later, those opted out with ``clicktracking="off"``, and ScaiSend's own URLs.

Features that change where a link finally leads register a *destination transform* in the
shared instrumenting state; whichever feature writes the href applies every transform, so the
order of features decides the order of transforms (UTM parameters are added before click
tracking binds the destination to the message).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any, NamedTuple

from core.markup import Attribute, Tag, scan_link_tags

_PLACEHOLDER = re.compile(r"\{\{.*?\}\}|\*\|.*?\|\*|<%.*?%>|%[A-Za-z0-9_.-]+%", re.DOTALL)
_HTTP = re.compile(r"^https?://[^\s/?#]", re.IGNORECASE)
_TRANSFORMS = "link_destination_transforms"
_TAB_OR_NEWLINE = re.compile(r"[\t\n\r]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

DestinationTransform = Callable[[str], str]


class Link(NamedTuple):
    tag: Tag
    href: Attribute
    url: str
    """The destination as a browser reads it: entities decoded, surrounding spaces trimmed."""

    @property
    def opted_out(self) -> bool:
        attribute = self.tag.get("clicktracking")
        return attribute is not None and (attribute.value or "").strip().lower() == "off"


def is_http(url: str) -> bool:
    """An absolute http(s) URL with a host and no control characters."""
    return bool(_HTTP.match(url)) and not _CONTROL.search(url)


def has_placeholder(text: str) -> bool:
    return bool(_PLACEHOLDER.search(text))


# Browsers drop tabs and newlines inside a URL, so they may stand between the letters of "http".
_SPLIT_HTTP = re.compile(r"h[\t\n\r]*t[\t\n\r]*t[\t\n\r]*p")


def _may_matter(tag_text: str) -> bool:
    """Whether a link tag could lead to an http(s) URL or opt out of click tracking: its text
    holds "http" in any case, "&" (a character reference may spell any of it) or the opt-out
    attribute's name."""
    if "&" in tag_text:
        return True
    lowered = tag_text.lower()
    return (
        "http" in lowered
        or "clicktracking" in lowered
        or (
            ("\t" in lowered or "\n" in lowered or "\r" in lowered)
            and _SPLIT_HTTP.search(lowered) is not None
        )
    )


@functools.lru_cache(maxsize=4)
def links(source: str) -> tuple[Link, ...]:
    """The hrefs of link-bearing tags that could lead to an http(s) URL or carry
    ``clicktracking``, in document order; tags that can do neither (``#top``, ``mailto:``,
    ``*|UNSUB|*``: most links of most messages) are stepped over without parsing them.

    Remembered for the last few sources, so the features of one message (and the sends of one
    newsletter) share a single scan; links are immutable, so sharing them is safe.
    """
    found = (link_of(tag) for tag in scan_link_tags(source, wanted=_may_matter))
    return tuple(link for link in found if link is not None)


def link_of(tag: Tag) -> Link | None:
    """The link a tag's href makes, as a browser reads it; ``None`` without an href value."""
    href = tag.get("href")
    if href is None or href.value is None:
        return None
    url = href.value.strip()
    if "\t" in url or "\n" in url or "\r" in url:
        # As browsers do (URL standard): tabs and newlines inside a URL are dropped.
        url = _TAB_OR_NEWLINE.sub("", url)
    return Link(tag, href, url)


def is_own(url: str, tracking_base_url: str) -> bool:
    base = tracking_base_url.rstrip("/").lower()
    lowered = url.lower()
    return any(lowered.startswith(base + path) for path in ("/t/", "/i/"))


def trackable(link: Link, tracking_base_url: str) -> bool:
    """Whether click tracking rewrites this link."""
    return (
        is_http(link.url)
        and not link.opted_out
        and not has_placeholder(link.href.raw_value or "")
        and not is_own(link.url, tracking_base_url)
    )


def add_destination_transform(state: dict[str, Any], transform: DestinationTransform) -> None:
    state.setdefault(_TRANSFORMS, []).append(transform)


def destination(state: dict[str, Any], url: str) -> str:
    """Where ``url`` should finally lead, after every registered transform."""
    for transform in state.get(_TRANSFORMS, ()):
        url = transform(url)
    return url


def attribute_text(value: str, quote: str) -> str:
    """``value`` written for an attribute value delimited by ``quote`` (or unquoted)."""
    text = value.replace("&", "&amp;")
    if quote == '"':
        return text.replace('"', "&quot;")
    if quote == "'":
        return text.replace("'", "&#39;")
    # Unquoted: nothing that would end the value or the tag may appear.
    for char, escaped in (
        (" ", "%20"),
        ('"', "%22"),
        ("'", "%27"),
        ("<", "%3C"),
        (">", "%3E"),
        ("`", "%60"),
        ("=", "%3D"),
    ):
        text = text.replace(char, escaped)
    return text
