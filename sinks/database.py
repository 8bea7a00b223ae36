"""The ``database`` sink: events into the ``events`` table, idempotent on the event id."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import peewee as pw

from core import Event, Runtime, SinkType, hookimpl
from core.storage import EventRecord


class DatabaseSink:
    def __init__(self, name: str, db: pw.Database, chunk: int = 500) -> None:
        self.name = name
        self.db = db
        self.chunk = chunk

    def write_batch(self, events: Sequence[Event]) -> None:
        rows = [
            {
                "id": event.id,
                "type": event.type,
                "tenant": event.tenant,
                "message_id": event.message_id,
                "recipient": event.recipient,
                "timestamp": event.timestamp.replace(tzinfo=None),
                "data": dict(event.data),
                "bot": dict(event.bot) if event.bot is not None else None,
            }
            for event in events
        ]
        self.db.connect(reuse_if_open=True)
        with self.db.atomic():
            for start in range(0, len(rows), self.chunk):
                (
                    EventRecord.insert_many(rows[start : start + self.chunk])
                    .on_conflict_ignore()
                    .execute()
                )

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
