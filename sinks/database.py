"""The ``database`` sink: events into the ``events`` table, idempotent on the event id."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import peewee as pw
from psycopg2.extras import execute_values  # type: ignore[import-untyped]

from core import Event, Runtime, SinkType, hookimpl
from core.storage import EventRecord

_FIELDS = (
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
    """Writes each batch in one transaction with the driver's own batch call.

    Building a peewee ``insert_many`` query costs more than the database's whole work for the
    same rows, so the statement is written once and the rows go to the driver as plain tuples,
    each JSON value stored as peewee stores it (SQLite: through ``json()``; PostgreSQL: the
    field's own adapter).
    """

    def __init__(self, name: str, db: pw.Database, chunk: int = 1000) -> None:
        self.name = name
        self.db = db
        self.chunk = chunk
        columns = ", ".join(f'"{field.column_name}"' for field in _FIELDS)
        table = EventRecord._meta.table_name
        self._postgres = isinstance(db, pw.PostgresqlDatabase)
        values = "%s" if self._postgres else "(?, ?, ?, ?, ?, ?, json(?), json(?))"
        # Names come from the model and values are bound, never interpolated.
        sql = f'INSERT INTO "{table}" ({columns}) VALUES {values} ON CONFLICT DO NOTHING'  # noqa: S608
        self._sql = sql

    def _json(self, field: pw.Field, value: Mapping[str, Any] | None) -> Any:
        if value is None:
            return None
        if self._postgres:
            return field.db_value(dict(value))  # type: ignore[no-untyped-call]
        return json.dumps(dict(value))

    def write_batch(self, events: Sequence[Event]) -> None:
        data, bot = EventRecord.data, EventRecord.bot
        rows = [
            (
                event.id,
                event.type,
                event.tenant,
                event.message_id,
                event.recipient,
                event.timestamp.replace(tzinfo=None),
                self._json(data, event.data),
                self._json(bot, event.bot),
            )
            for event in events
        ]
        self.db.connect(reuse_if_open=True)
        with self.db.atomic():
            cursor = self.db.cursor()  # type: ignore[no-untyped-call]
            if self._postgres:
                execute_values(cursor, self._sql, rows, page_size=self.chunk)
            else:
                cursor.executemany(self._sql, rows)

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
