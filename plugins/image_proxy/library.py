"""A tenant's image library: blocking operations on the metadata tables and the blob store.

Routes run these off the event loop. Every read and write names the tenant, so one tenant
never sees, changes or learns of another's images. Ids are random (144 bits), never derived
from the content or from a counter, so they cannot be guessed or enumerated.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import io
import re
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import peewee as pw
from PIL import Image, ImageOps

from core.storage import database_proxy
from core.storage.models import utcnow
from plugins.image_proxy.blobs import BlobStore, FileBlobStore
from plugins.image_proxy.models import LibraryImage, Thumbnail
from plugins.image_proxy.validation import ImageInfo, inspect

THUMBNAIL_SIZE = 200
"""The longest side of a thumbnail, in pixels."""


IMAGE_ID = re.compile(r"img_[A-Za-z0-9_-]{24}")


def new_image_id() -> str:
    return "img_" + secrets.token_urlsafe(18)


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Served:
    """What ``/i/{image_id}`` answers with."""

    content_type: str
    content_hash: str
    size: int
    location: str
    tenant: str

    @property
    def etag(self) -> str:
        return f'"{self.content_hash}"'


def matches(if_none_match: str, etag: str) -> bool:
    """Whether an ``If-None-Match`` header names ``etag`` (weak comparison, as RFC 9110 asks)."""
    candidates = [part.strip() for part in if_none_match.split(",")]
    return any(c == "*" or c.removeprefix("W/") == etag for c in candidates)


Lookup = Served | Literal["gone"] | None


@dataclass(frozen=True)
class Opened:
    """One load: the library image, what to answer with (it or its thumbnail), the bytes."""

    image: Lookup
    served: Served | None
    body: bytes | None


def describe(row: LibraryImage, base_url: str) -> dict[str, Any]:
    return {
        "id": row.id,
        "url": f"{base_url}/i/{row.id}",
        "content_type": row.content_type,
        "width": row.width,
        "height": row.height,
        "size": row.size,
        "content_hash": row.content_hash,
        "filename": row.filename,
        "created_at": row.created_at.replace(tzinfo=dt.UTC).isoformat(),
    }


def _live(tenant: str, image_id: str) -> LibraryImage | None:
    if not IMAGE_ID.fullmatch(image_id):
        return None  # never an id we issued; PostgreSQL would refuse some (a NUL) outright
    found: LibraryImage | None = LibraryImage.get_or_none(
        (LibraryImage.id == image_id)
        & (LibraryImage.tenant == tenant)
        & LibraryImage.deleted_at.is_null()
    )
    return found


class ImageLibrary:
    def __init__(self, db: pw.Database, data_dir: Path, store: BlobStore | None = None) -> None:
        self.db = db
        self.store = store or FileBlobStore(data_dir / "images")
        self._lock_path = data_dir / "images.lock"

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        # Between writing a file and recording it, or forgetting a file and removing it, no
        # other process may do the other: a shared file would be left without its bytes.
        self._lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def add(
        self,
        tenant: str,
        data: bytes,
        *,
        filename: str | None,
        declared_type: str | None,
    ) -> LibraryImage:
        """Check and keep an upload; :class:`InvalidImage` if it is refused (nothing kept)."""
        info: ImageInfo = inspect(data, filename=filename, declared_type=declared_type)
        digest = content_hash(data)
        with self._exclusive(), self.db.connection_context():
            location = self.store.put(digest, data)
            try:
                return LibraryImage.create(
                    id=new_image_id(),
                    tenant=tenant,
                    content_hash=digest,
                    content_type=info.content_type,
                    size=len(data),
                    width=info.width,
                    height=info.height,
                    filename=filename[:255] if filename else None,
                    location=location,
                )
            except Exception:
                self._forget_unused(digest, location)  # no row, so no file left behind
                raise

    def get(self, tenant: str, image_id: str) -> LibraryImage | None:
        with self.db.connection_context():
            return _live(tenant, image_id)

    def page(self, tenant: str, limit: int, offset: int) -> tuple[list[LibraryImage], int]:
        """Newest first; also the number of images the tenant has."""
        live = (LibraryImage.tenant == tenant) & LibraryImage.deleted_at.is_null()
        with self.db.connection_context():
            rows = list(
                LibraryImage.select()
                .where(live)
                .order_by(LibraryImage.created_at.desc(), LibraryImage.id)
                .limit(limit)
                .offset(offset)
            )
            return rows, LibraryImage.select().where(live).count()

    def delete(self, tenant: str, image_id: str) -> bool:
        """Delete an image; ``False`` if the tenant has no such image."""
        # SQLite: take the write lock up front. A transaction that reads first and then
        # writes fails at once ("database is locked") if another connection wrote meanwhile.
        atomic = (
            self.db.atomic("IMMEDIATE")
            if isinstance(self.db, pw.SqliteDatabase)
            else self.db.atomic()
        )
        with self._exclusive(), self.db.connection_context():
            with atomic:
                row = _live(tenant, image_id)
                if row is None:
                    return False
                if row.sent_at is None:
                    row.delete_instance()
                else:
                    row.deleted_at = utcnow()
                    row.save()
            self._forget_unused(row.content_hash, row.location)
        return True

    def _forget_unused(self, digest: str, location: str) -> None:
        in_use = (
            LibraryImage.select()
            .where((LibraryImage.content_hash == digest) & LibraryImage.deleted_at.is_null())
            .exists()
        )
        if in_use:
            return
        self.store.delete(location)
        thumbnail = Thumbnail.get_or_none(Thumbnail.source_hash == digest)
        if thumbnail is not None:
            if thumbnail.location != location:
                self.store.delete(thumbnail.location)
            thumbnail.delete_instance()

    def _reading(self) -> contextlib.AbstractContextManager[object]:
        # Every image load reads here. A pool lends a connection per use; SQLite has no pool
        # and opening a connection runs four pragmas, so each worker thread keeps its own.
        if isinstance(self.db, pw.SqliteDatabase):
            return contextlib.nullcontext()
        return self.db.connection_context()

    def lookup(self, image_id: str) -> Lookup:
        """The image to serve for ``image_id``, ``"gone"`` if it was deleted after being sent,
        ``None`` if there never was one."""
        if not IMAGE_ID.fullmatch(image_id):
            return None
        with self._reading():
            row = LibraryImage.get_or_none(LibraryImage.id == image_id)
        if row is None:
            return None
        if row.deleted_at is not None:
            return "gone"
        return Served(row.content_type, row.content_hash, row.size, row.location, row.tenant)

    def fetch(self, image_id: str, *, thumbnail: bool, read: bool, if_none_match: str) -> Opened:
        """Everything one load of ``/i/{image_id}`` needs, in one call off the event loop; the
        bytes only if ``read`` and the client's ``If-None-Match`` does not name them."""
        image = self.lookup(image_id)
        if not isinstance(image, Served):
            return Opened(image, None, None)
        served = self.thumbnail(image) if thumbnail else image
        read = read and served is not None and not matches(if_none_match, served.etag)
        body = None
        if served is not None and read:
            body = self.store.get(served.location)
        if served is None or (read and body is None):
            return Opened("gone", None, None)  # deleted while this load was under way
        return Opened(image, served, body)

    def thumbnail(self, image: Served, size: int = THUMBNAIL_SIZE) -> Served | None:
        """The image's preview, made on first request and kept; ``None`` if its bytes are gone."""
        with self._reading():
            made = Thumbnail.get_or_none(Thumbnail.source_hash == image.content_hash)
        if made is None:
            data = self.store.get(image.location)
            if data is None:
                return None
            preview = make_thumbnail(data, size)
            with self._exclusive(), self.db.connection_context():
                # Kept under a key of its own: no other image's bytes can be the same file.
                location = (
                    image.location
                    if preview is None
                    else self.store.put("thumb" + image.content_hash, preview)
                )
                Thumbnail.insert(
                    source_hash=image.content_hash,
                    content_hash=image.content_hash if preview is None else content_hash(preview),
                    content_type=image.content_type,
                    size=image.size if preview is None else len(preview),
                    location=location,
                ).on_conflict_ignore().execute()
                made = Thumbnail.get(Thumbnail.source_hash == image.content_hash)
        return Served(made.content_type, made.content_hash, made.size, made.location, image.tenant)


def images_for_message(tenant: str, image_ids: Iterable[str]) -> dict[str, LibraryImage]:
    """The tenant's live images among ``image_ids``, now marked as sent (so that deleting one
    later leaves a tombstone)."""
    wanted = sorted(set(image_ids))
    if not wanted:
        return {}
    with database_proxy.connection_context():
        rows = {
            row.id: row
            for row in LibraryImage.select().where(
                LibraryImage.id.in_(wanted)
                & (LibraryImage.tenant == tenant)
                & LibraryImage.deleted_at.is_null()
            )
        }
        if rows:
            LibraryImage.update(sent_at=utcnow()).where(
                LibraryImage.id.in_(list(rows)) & LibraryImage.sent_at.is_null()
            ).execute()
    return rows


def make_thumbnail(data: bytes, size: int) -> bytes | None:
    """A preview at most ``size`` pixels on its longer side, in the original's format (its
    first frame); ``None`` if the original is no bigger than that already."""
    with Image.open(io.BytesIO(data)) as image:
        if image.width <= size and image.height <= size:
            return None
        image_format = str(image.format)
        image.seek(0)
        # The preview carries no EXIF, so it is turned upright as a viewer shows the original.
        frame = ImageOps.exif_transpose(image.copy())
    frame.thumbnail((size, size))
    if image_format == "JPEG" and frame.mode not in ("RGB", "L", "CMYK"):
        frame = frame.convert("RGB")
    out = io.BytesIO()
    frame.save(out, image_format)
    return out.getvalue()
