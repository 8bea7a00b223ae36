"""The image library's tables: one row per uploaded image, one per thumbnail made."""

from __future__ import annotations

import peewee as pw

from core.storage import database_proxy
from core.storage.models import utcnow


class LibraryImage(pw.Model):
    """An image in a tenant's library.

    ``sent_at`` is set when a message referring to the image is compiled. Deleting an image
    that was never sent removes its row; deleting a sent one keeps the row as a tombstone
    (``deleted_at``), so mail already delivered gets ``410 Gone`` rather than ``404``.
    """

    id = pw.CharField(primary_key=True, max_length=64)
    tenant = pw.CharField(max_length=128)
    content_hash = pw.CharField(max_length=64, index=True)
    content_type = pw.CharField(max_length=32)
    size = pw.IntegerField()
    width = pw.IntegerField()
    height = pw.IntegerField()
    filename = pw.CharField(max_length=255, null=True)
    location = pw.TextField()
    created_at = pw.DateTimeField(default=utcnow)
    sent_at = pw.DateTimeField(null=True)
    deleted_at = pw.DateTimeField(null=True)

    class Meta:
        database = database_proxy
        table_name = "image_library"
        indexes = ((("tenant", "deleted_at", "created_at"), False),)


class Thumbnail(pw.Model):
    """The preview of one image content, made on first request and kept."""

    source_hash = pw.CharField(primary_key=True, max_length=64)
    content_hash = pw.CharField(max_length=64)
    content_type = pw.CharField(max_length=32)
    size = pw.IntegerField()
    location = pw.TextField()

    class Meta:
        database = database_proxy
        table_name = "image_thumbnails"


MODELS: tuple[type[pw.Model], ...] = (LibraryImage, Thumbnail)
