"""Batched writes handed to the database driver as plain tuples.

For thousands of rows, building a peewee query (one SQL node per value) costs more than the
database's own work on them. These helpers write the statement once and let the driver run it
over every row: ``executemany`` on SQLite, and on PostgreSQL ``execute_values`` (one
multi-row statement per page), so a batch costs a few round trips. The caller holds the
connection and the transaction.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import peewee as pw
from psycopg2.extras import execute_values  # type: ignore[import-untyped]


def _is_postgres(db: pw.Database) -> bool:
    return isinstance(db, pw.PostgresqlDatabase)


def insert_ignoring_conflicts(
    db: pw.Database,
    fields: Sequence[pw.Field],
    rows: Sequence[Sequence[Any]],
    page_size: int = 1000,
) -> None:
    """``INSERT`` ``rows`` (one value per field, in order) into the fields' table; a row that
    conflicts with a unique key already stored is skipped. JSON fields take Python values and
    are stored exactly as peewee stores them."""
    if not rows:
        return
    postgres = _is_postgres(db)
    table = fields[0].model._meta.table_name
    columns = ", ".join(f'"{field.column_name}"' for field in fields)
    json_fields = {i: field for i, field in enumerate(fields) if isinstance(field, pw.JSONField)}
    if json_fields:
        rows = [
            tuple(
                _json_value(json_fields[i], value, postgres) if i in json_fields else value
                for i, value in enumerate(row)
            )
            for row in rows
        ]
    cursor = db.cursor()  # type: ignore[no-untyped-call]
    # Names come from the models and values are bound, never interpolated.
    if postgres:
        sql = f'INSERT INTO "{table}" ({columns}) VALUES %s ON CONFLICT DO NOTHING'  # noqa: S608
        execute_values(cursor, sql, rows, page_size=page_size)
    else:
        marks = ", ".join("json(?)" if i in json_fields else "?" for i in range(len(fields)))
        sql = f'INSERT INTO "{table}" ({columns}) VALUES ({marks}) ON CONFLICT DO NOTHING'  # noqa: S608
        cursor.executemany(sql, rows)


def _json_value(field: pw.Field, value: Any, postgres: bool) -> Any:
    if value is None:
        return None
    if postgres:
        return field.db_value(value)  # type: ignore[no-untyped-call]
    return json.dumps(value)  # SQLite: the statement wraps it in json(), as peewee does


def set_where_null(
    db: pw.Database,
    target: pw.Field,
    keys: Sequence[pw.Field],
    rows: Sequence[Sequence[Any]],
    page_size: int = 1000,
) -> None:
    """For each row ``(value, *key values)``: set ``target`` to ``value`` on the stored row
    whose ``keys`` match, unless it is already set. Rows must name distinct keys."""
    if not rows:
        return
    table = target.model._meta.table_name
    column = target.column_name
    cursor = db.cursor()  # type: ignore[no-untyped-call]
    # Names come from the models and values are bound, never interpolated.
    if _is_postgres(db):
        names = ", ".join(f"k{i}" for i in range(len(keys)))
        match = " AND ".join(f't."{key.column_name}" = v.k{i}' for i, key in enumerate(keys))
        sql = (
            f'UPDATE "{table}" AS t SET "{column}" = v.value '  # noqa: S608
            f"FROM (VALUES %s) AS v(value, {names}) "
            f'WHERE {match} AND t."{column}" IS NULL'
        )
        execute_values(cursor, sql, rows, page_size=page_size)
    else:
        match = " AND ".join(f'"{key.column_name}" = ?' for key in keys)
        sql = f'UPDATE "{table}" SET "{column}" = ? WHERE {match} AND "{column}" IS NULL'  # noqa: S608
        cursor.executemany(sql, rows)
