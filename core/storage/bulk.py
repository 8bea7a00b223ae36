"""Batched writes handed to the database driver as plain tuples.

For thousands of rows, building a peewee query (one SQL node per value) costs more than the
database's own work on them. These helpers write the statement once and let the driver run it
over every row: ``executemany`` on SQLite; on PostgreSQL ``COPY`` for inserts and
``execute_values`` (one multi-row statement per page) for updates, so a batch costs a few
round trips. The caller holds the
connection and the transaction.
"""

from __future__ import annotations

import datetime as dt
import io
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
) -> None:
    """``INSERT`` ``rows`` (one value per field, in order) into the fields' table; a row that
    conflicts with a unique key already stored is skipped. JSON fields take Python values and
    are stored exactly as peewee stores them."""
    if not rows:
        return
    table = fields[0].model._meta.table_name
    columns = ", ".join(f'"{field.column_name}"' for field in fields)
    is_json = [isinstance(field, pw.JSONField) for field in fields]
    cursor = db.cursor()  # type: ignore[no-untyped-call]
    # Names come from the models and values are bound or escaped, never interpolated.
    if _is_postgres(db):
        # COPY into a per-session staging table, then one INSERT ... SELECT: the cheapest way
        # in, for the client and the server, that can still skip conflicting rows.
        staging = f"_incoming_{table}"
        cursor.execute(f'CREATE TEMP TABLE IF NOT EXISTS "{staging}" (LIKE "{table}")')
        text = "".join(_copy_line(row, is_json) for row in rows)
        cursor.copy_expert(f'COPY "{staging}" ({columns}) FROM STDIN', io.StringIO(text))
        cursor.execute(
            f'INSERT INTO "{table}" ({columns}) SELECT {columns} FROM "{staging}" '  # noqa: S608
            "ON CONFLICT DO NOTHING"
        )
        cursor.execute(f'TRUNCATE "{staging}"')  # empty for the next call, even in this transaction
        return
    rows = [
        tuple(
            json.dumps(value) if json_value and value is not None else value
            for json_value, value in zip(is_json, row, strict=True)
        )
        for row in rows
    ]
    # SQLite stores JSON through json(), as peewee does.
    marks = ", ".join("json(?)" if json_value else "?" for json_value in is_json)
    sql = f'INSERT INTO "{table}" ({columns}) VALUES ({marks}) ON CONFLICT DO NOTHING'  # noqa: S608
    cursor.executemany(sql, rows)


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_value(value: Any, json_value: bool) -> str:
    """One field in COPY's text format."""
    if value is None:
        return "\\N"
    if json_value:
        value = json.dumps(value)
    elif isinstance(value, bool):
        return "t" if value else "f"
    elif isinstance(value, dt.datetime):
        return value.isoformat(" ")
    elif not isinstance(value, str):
        return str(value)
    return str(value).translate(_COPY_ESCAPES)


def _copy_line(row: Sequence[Any], is_json: Sequence[bool]) -> str:
    return (
        "\t".join(
            _copy_value(value, json_value) for value, json_value in zip(row, is_json, strict=True)
        )
        + "\n"
    )


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
