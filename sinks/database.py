"""The ``database`` sink: events into the ``events`` table, idempotent on the event id."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import peewee as pw

from core import Event, Runtime, SinkType, hookimpl
from core.storage import EventRecord
from core.storage.bulk import insert_ignoring_conflicts

EVENT_FIELDS = (  # the columns the sink fills, in the order of its rows
    EventRecord.id,
    EventRecord.type,
    EventRecord.tenant,
    EventRecord.message_id,
    EventRecord.recipient,
    EventRecord.timestamp,
    EventRecord.data,
    EventRecord.bot,
)


class DatabaseSink:
    """Each batch in one transaction, handed to the driver in one batched call (on PostgreSQL
    a ``COPY`` that is its own transaction: one round trip)."""

    def __init__(self, name: str, db: pw.Database) -> None:
        self.name = name
        self.db = db

    def write_batch(self, events: Sequence[Event]) -> None:
        rows = [
            (
                event.id,
                event.type,
                event.tenant,
                event.message_id,
                event.recipient,
                event.timestamp.replace(tzinfo=None),
                dict(event.data),
                dict(event.bot) if event.bot is not None else None,
            )
            for event in events
        ]
        self.db.connect(reuse_if_open=True)
        insert_ignoring_conflicts(self.db, EVENT_FIELDS, rows)

    def close(self) -> None:
        if not self.db.is_closed():
            self.db.close()


def _factory(options: Mapping[str, Any], runtime: Runtime) -> DatabaseSink:
    return DatabaseSink(options["name"], runtime.db)


@hookimpl
def register_sinks() -> Iterable[SinkType]:
    return [
        SinkType(
            type="database",
            factory=_factory,
            description="events into the server's database (the events table)",
        )
    ]
