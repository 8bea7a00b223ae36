"""Where outgoing HTML refers to library images.

A template refers to an image of its tenant's library by the ``src`` of an ``<img>`` (or of
Outlook's VML ``<v:image>`` and ``<v:fill>``), written either as ``scaisend-image:{id}`` or as
the image's library URL ``{tracking base}/i/{id}`` (what ``POST /v3/images`` answers as
``url``). Only the ``src`` value is ever changed: every other byte stays the author's.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from core.markup import Attribute, scan_image_tags
from plugins.image_proxy.library import IMAGE_ID

SCHEME = "scaisend-image:"
_TAGS = frozenset({"img", "v:image", "v:fill"})


@dataclass(frozen=True)
class Reference:
    src: Attribute
    image_id: str


def image_id_of(url: str, tracking_base_url: str) -> str | None:
    """The library image ``url`` names, if it names one."""
    url = url.strip()
    library_url = tracking_base_url.rstrip("/") + "/i/"
    if url[: len(SCHEME)].lower() == SCHEME:
        candidate = url[len(SCHEME) :]
    elif url.lower().startswith(library_url.lower()):
        candidate = url[len(library_url) :]
    else:
        return None
    return candidate if IMAGE_ID.fullmatch(candidate) else None


def references(source: str, tracking_base_url: str) -> Iterator[Reference]:
    """Every image ``src`` in ``source`` naming a library image, in document order."""
    for tag in scan_image_tags(source):
        if tag.name not in _TAGS:
            continue
        src = tag.get("src")
        if src is None or src.value is None:
            continue
        image_id = image_id_of(src.value, tracking_base_url)
        if image_id is not None:
            yield Reference(src, image_id)
