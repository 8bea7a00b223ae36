"""Mail received on the inbound SMTP port, as the ``handle_inbound_mail`` hook sees it."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field


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
