"""Where image bytes live: a small storage interface and its filesystem implementation.

A store keeps bytes under a key (a content hash, so equal contents share one copy) and
answers with a *location*, which the library records beside the image's metadata. Reads and
deletes go by location, so whoever can read the database (the server, the send path, the
command line) finds the bytes without being told where the store is. An object store is
another :class:`BlobStore` whose locations use its own URL scheme.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit
from urllib.request import url2pathname


class BlobStore(Protocol):
    def put(self, key: str, data: bytes) -> str:
        """Keep ``data`` under ``key`` (writing it whole or not at all); its location."""

    def get(self, location: str) -> bytes | None:
        """The bytes at ``location``, or ``None`` if they are gone."""

    def delete(self, location: str) -> None:
        """Remove the bytes at ``location``; nothing happens if they are already gone."""


class FileBlobStore:
    """Content-addressed files under ``root``: ``root/ab/abcdef...``."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def _path(self, key: str) -> Path:
        if not key.isalnum():
            raise ValueError(f"invalid blob key {key!r}")
        return self.root / key[:2] / key

    def _own(self, location: str) -> Path:
        path = path_of(location)
        if path is None or self.root not in path.parents:
            raise ValueError(f"{location!r} is not in this store")
        return path

    def put(self, key: str, data: bytes) -> str:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # A reader never sees a partly written file: write beside it, flush, then rename.
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".upload-")
        try:
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
        return path.as_uri()

    def get(self, location: str) -> bytes | None:
        try:
            return self._own(location).read_bytes()
        except FileNotFoundError:
            return None

    def delete(self, location: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._own(location).unlink()


def path_of(location: str) -> Path | None:
    """The file a ``file:`` location names; ``None`` for any other kind of location."""
    parts = urlsplit(location)
    if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
        return None
    return Path(url2pathname(parts.path))


def store_for(location: str) -> BlobStore:
    """The store holding ``location``, for code that reads without a library at hand (the
    send path); a new kind of store adds its URL scheme here."""
    path = path_of(location)
    if path is None:
        raise ValueError(f"no store can read {location!r}")
    return FileBlobStore(path.parent.parent)
