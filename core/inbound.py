"""Mail received on the inbound SMTP port, as the ``handle_inbound_mail`` hook sees it."""

from __future__ import annotations

import datetime as dt
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

UNCLAIMED_DIR = Path("inbound") / "unclaimed"
"""Under the data directory: messages no plugin claimed."""
UNATTRIBUTED_DIR = Path("inbound") / "unattributed"
"""Under the data directory: reports that name no message ScaiSend sent."""

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class InboundMessage:
    """One message accepted by the SMTP listener: its envelope and its bytes, unaltered."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    peer: str | None = None
    received_at: dt.datetime = field(default_factory=_now)

    def as_eml(self) -> bytes:
        """The message as a delivering MTA files it: the envelope as ``Return-Path`` and
        ``Delivered-To`` fields (which attribution needs later), then the bytes received."""
        lines = [f"Return-Path: <{_CONTROL.sub('?', self.mail_from)}>\r\n"]
        lines += [f"Delivered-To: {_CONTROL.sub('?', rcpt)}\r\n" for rcpt in self.rcpt_tos]
        return "".join(lines).encode("utf-8", "surrogateescape") + self.data


def keep(message: InboundMessage, directory: Path) -> Path:
    """Write ``message`` to ``directory`` as a new ``.eml`` (blocking), complete or not at all."""
    directory.mkdir(parents=True, exist_ok=True)
    # Names sort in the order messages were received, which is how pruning finds the oldest.
    name = f"{message.received_at:%Y%m%dT%H%M%S%f}-{secrets.token_hex(6)}.eml"
    draft = directory / f".{name}.part"
    with draft.open("wb") as file:
        file.write(message.as_eml())
        file.flush()
        os.fsync(file.fileno())
    return draft.replace(directory / name)


def prune(directory: Path, max_bytes: int) -> int:
    """Remove the oldest kept messages of ``directory`` until it holds at most ``max_bytes``
    (blocking); the number removed. The newest message always stays, and files still being
    written (``.part``) are neither counted nor touched."""
    kept: list[tuple[str, int]] = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if entry.name.startswith(".") or not entry.name.endswith(".eml"):
            continue
        try:
            size = entry.stat().st_size
        except FileNotFoundError:  # removed meanwhile by a concurrent prune
            continue
        kept.append((entry.name, size))
    kept.sort()
    total = sum(size for _, size in kept)
    removed = 0
    for name, size in kept[:-1]:
        if total <= max_bytes:
            break
        (directory / name).unlink(missing_ok=True)
        total -= size
        removed += 1
    return removed
