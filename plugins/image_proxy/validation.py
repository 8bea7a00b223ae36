"""Accepting an uploaded image: what it is is decided from its bytes, and all of them must be it.

An upload is kept only if Pillow recognises it as PNG, JPEG, GIF or WebP, decodes every
frame without error, and the image's own structure ends exactly where the file ends. Bytes
after the end (a ZIP, a PDF, a script appended to a valid picture: a polyglot) are refused,
as is markup anywhere in the file (which a browser that sniffs content could run), and a file
whose name or declared type says it is something else.
"""

from __future__ import annotations

import io
import re
import struct
import warnings
from dataclasses import dataclass

from PIL import Image, ImageSequence, UnidentifiedImageError

FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif", "WEBP": "image/webp"}
EXTENSIONS = {
    "image/png": (".png",),
    "image/jpeg": (".jpg", ".jpeg", ".jpe", ".jfif"),
    "image/gif": (".gif",),
    "image/webp": (".webp",),
}
MAX_PIXELS = 50_000_000
"""Per frame; decoding a bigger (or falsely declared) canvas costs too much memory."""
MAX_TOTAL_PIXELS = 250_000_000
"""All frames of an animation together."""

_MARKUP = re.compile(rb"<(?:script|html|body|svg|iframe|object|embed|\?php|!doctype)", re.I)


class InvalidImage(ValueError):
    """The upload is not an image we keep; the message says why, for the uploader."""


@dataclass(frozen=True)
class ImageInfo:
    content_type: str
    width: int
    height: int


def inspect(data: bytes, *, filename: str | None, declared_type: str | None) -> ImageInfo:
    """What ``data`` is, or :class:`InvalidImage` saying why it is refused."""
    if not data:
        raise InvalidImage("the file is empty")
    info = _decode(data)
    end = _END_OF[info.content_type](data)
    if end < len(data):
        raise InvalidImage(
            f"{len(data) - end} bytes follow the end of the {_name(info)} image "
            "(a file that is also another format is refused)"
        )
    if _MARKUP.search(data):
        raise InvalidImage("the file contains markup or script")
    _check_label(info, filename, declared_type)
    return info


def _name(info: ImageInfo) -> str:
    return info.content_type.removeprefix("image/").upper()


def _decode(data: bytes) -> ImageInfo:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=list(FORMATS))
            content_type = FORMATS[str(image.format)]
            if image.width * image.height > MAX_PIXELS:
                raise InvalidImage(f"the image is larger than {MAX_PIXELS} pixels")
            total = 0
            for frame in ImageSequence.Iterator(image):
                frame.load()
                total += image.width * image.height
                if total > MAX_TOTAL_PIXELS:
                    raise InvalidImage(f"the frames hold more than {MAX_TOTAL_PIXELS} pixels")
            return ImageInfo(content_type, image.width, image.height)
    except UnidentifiedImageError as exc:
        raise InvalidImage("not a PNG, JPEG, GIF or WebP image") from exc
    except (
        OSError,
        SyntaxError,
        ValueError,
        EOFError,
        IndexError,
        KeyError,
        struct.error,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as exc:
        if isinstance(exc, InvalidImage):
            raise
        raise InvalidImage(f"the image does not decode (truncated or corrupt): {exc}") from exc


def _check_label(info: ImageInfo, filename: str | None, declared_type: str | None) -> None:
    declared = (declared_type or "").split(";", 1)[0].strip().lower()
    if declared == "image/jpg":
        declared = "image/jpeg"
    if declared and declared != "application/octet-stream" and declared != info.content_type:
        raise InvalidImage(f"the file is {_name(info)} but is labelled {declared}")
    suffix = ("." + filename.rsplit(".", 1)[1].lower()) if filename and "." in filename else ""
    if suffix and suffix not in EXTENSIONS[info.content_type]:
        raise InvalidImage(f"the file is {_name(info)} but is named {filename!r}")


# --- where each format's structure ends --------------------------------------------------


def _truncated(kind: str) -> InvalidImage:
    return InvalidImage(f"the {kind} image is truncated")


def png_end(data: bytes) -> int:
    """Offset after the IEND chunk."""
    pos = 8
    while pos + 12 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        pos += 12 + length
        if kind == b"IEND":
            return pos
    raise _truncated("PNG")


def jpeg_end(data: bytes) -> int:
    """Offset after the EOI marker, walking segments and skipping entropy-coded data."""
    pos, length = 2, len(data)
    while pos < length:
        if data[pos] != 0xFF:
            raise InvalidImage("the JPEG image is corrupt (expected a marker)")
        while pos < length and data[pos] == 0xFF:
            pos += 1  # fill bytes before a marker
        if pos >= length:
            break
        marker = data[pos]
        pos += 1
        if marker == 0xD9:
            return pos
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            continue  # markers without a length
        if pos + 2 > length:
            break
        size = int.from_bytes(data[pos : pos + 2], "big")
        pos += size
        if marker == 0xDA:
            pos = _after_scan(data, pos)
    raise _truncated("JPEG")


def _after_scan(data: bytes, pos: int) -> int:
    """The offset of the marker ending the entropy-coded data that starts at ``pos``."""
    while True:
        pos = data.find(b"\xff", pos)
        if pos == -1 or pos + 1 >= len(data):
            raise _truncated("JPEG")
        following = data[pos + 1]
        if following == 0x00 or 0xD0 <= following <= 0xD7:
            pos += 2  # a stuffed 0xFF byte or a restart marker: still scan data
            continue
        return pos


def gif_end(data: bytes) -> int:
    """Offset after the trailer byte, walking every block."""
    if len(data) < 13:
        raise _truncated("GIF")
    pos = 13 + _color_table(data[10])
    while pos < len(data):
        introducer = data[pos]
        pos += 1
        if introducer == 0x3B:
            return pos
        if introducer == 0x21:  # extension: a label, then sub-blocks
            pos = _skip_sub_blocks(data, pos + 1)
        elif introducer == 0x2C:  # image: descriptor, color table, LZW code size, sub-blocks
            if pos + 9 > len(data):
                break
            pos += 9 + _color_table(data[pos + 8])
            pos = _skip_sub_blocks(data, pos + 1)
        else:
            raise InvalidImage("the GIF image is corrupt (unknown block)")
    raise _truncated("GIF")


def _color_table(flags: int) -> int:
    return 3 * 2 ** ((flags & 0x07) + 1) if flags & 0x80 else 0


def _skip_sub_blocks(data: bytes, pos: int) -> int:
    while pos < len(data):
        size = data[pos]
        pos += 1
        if size == 0:
            return pos
        pos += size
    raise _truncated("GIF")


def webp_end(data: bytes) -> int:
    """Offset after the RIFF container, whose header states its size."""
    if len(data) < 12:
        raise _truncated("WebP")
    size = int.from_bytes(data[4:8], "little")
    end = 8 + size + (size & 1)
    if end > len(data):
        raise _truncated("WebP")
    return end


_END_OF = {
    "image/png": png_end,
    "image/jpeg": jpeg_end,
    "image/gif": gif_end,
    "image/webp": webp_end,
}
