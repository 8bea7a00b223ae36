"""When each recipient first opened a message, read from the first interactions.

Enrichment decides a recipient's unique open by inserting its first interaction of kind
``open``; that row's time is the first-open time, so it is stored once, in the same statement
that decides it, and never copied onto the recipient's row.
"""

from __future__ import annotations

import datetime as dt
from typing import cast

import peewee as pw

from core.storage.models import FirstInteraction, MessageRecipient

OPEN = "open"


def first_open_times(message_id: str) -> dict[int, dt.datetime]:
    """Each stored recipient of ``message_id`` who opened it (by recipient number): when they
    first did, naive UTC. Recipients who have not opened it are absent."""
    query = (
        FirstInteraction.select(FirstInteraction.recipient_number, pw.fn.MIN(FirstInteraction.at))
        .join(
            MessageRecipient,
            on=(
                (MessageRecipient.message == FirstInteraction.message_id)
                & (MessageRecipient.number == FirstInteraction.recipient_number)
            ),
        )
        .where((FirstInteraction.message_id == message_id) & (FirstInteraction.kind == OPEN))
        .group_by(FirstInteraction.recipient_number)
        .tuples()
    )
    rows = cast("list[tuple[int, dt.datetime | str]]", list(query))
    return {number: _naive(at) for number, at in rows}


def _naive(value: dt.datetime | str) -> dt.datetime:
    # An aggregate loses the column's type on SQLite: the stored text comes back as is.
    return value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(value)
