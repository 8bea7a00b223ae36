"""Batched reads and writes handed to the database driver as plain tuples.

For thousands of rows, building a peewee query (one SQL node per value) costs more than the
database's own work on them. These helpers write the statement once and let the driver run it
over every row. On SQLite (in process, no round trips) that is ``executemany``, or a statement
per page of rows. On PostgreSQL inserts go through ``COPY`` (the cheapest way in, for client
and server); updates and reads send each column as one array parameter, turned back into rows
by ``unnest``: one statement and one round trip per batch, each array sent as one literal.
The caller holds the connection, and the transaction when statements must share one.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
from collections.abc import Sequence
from typing import Any

import peewee as pw

from core import jsontext

_UNIQUE_VIOLATION = "23505"


def _is_postgres(db: pw.Database) -> bool:
    return isinstance(db, pw.PostgresqlDatabase)


def _unnest(db: pw.Database, fields: Sequence[pw.Field], names: str) -> str:
    """``unnest(%s::type[], ...) AS v(names)``: one typed array parameter per field."""
    types = db.field_types
    arrays = ", ".join(f"%s::{types.get(field.field_type, field.field_type)}[]" for field in fields)
    return f"unnest({arrays}) AS v({names})"


def _columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    """Rows turned into one list per column."""
    return [list(column) for column in zip(*rows, strict=True)] if rows else [[]] * width


def _arrays(rows: Sequence[Sequence[Any]], width: int) -> list[str]:
    """Rows turned into one array literal per column: the parameters ``_unnest`` takes. The
    driver adapts a list value by value (a tenth of a second per 10,000 rows); one string per
    column, parsed by the server, costs a fraction of that."""
    return [_array_literal(column) for column in _columns(rows, width)]


def _array_literal(values: Sequence[Any]) -> str:
    """``values`` (text, integers, datetimes, booleans or ``None``) as a PostgreSQL array
    literal."""
    kinds = set(map(type, values))
    if kinds == {int}:
        return "{" + ",".join(map(str, values)) + "}"
    if kinds in ({str}, {dt.datetime}):
        quoted = '","'.join(map(str, values))
        # Nothing to escape (the usual case) when the only quotes are the separators'.
        if "\\" not in quoted and quoted.count('"') == 2 * (len(values) - 1):
            return '{"' + quoted + '"}'
    return "{" + ",".join(map(_array_element, values)) + "}"


def _array_element(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "t" if value else "f"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _json_values(
    fields: Sequence[pw.Field], rows: Sequence[Sequence[Any]]
) -> Sequence[Sequence[Any]]:
    """JSON fields' Python values as JSON text, as peewee stores them."""
    is_json = [isinstance(field, pw.JSONField) for field in fields]
    if not any(is_json):
        return rows
    return [
        tuple(
            jsontext.dumps_text(value) if json_value and value is not None else value
            for json_value, value in zip(is_json, row, strict=True)
        )
        for row in rows
    ]


def insert_ignoring_conflicts(
    db: pw.Database,
    fields: Sequence[pw.Field],
    rows: Sequence[Sequence[Any]],
) -> None:
    """``INSERT`` ``rows`` (one value per field, in order) into the fields' table, all or none:
    in the caller's transaction, or else in one of their own. A row that conflicts with a unique
    key already stored is skipped. JSON fields take Python values and are stored exactly as
    peewee stores them."""
    if not rows:
        return
    table = fields[0].model._meta.table_name
    columns = ", ".join(f'"{field.column_name}"' for field in fields)
    cursor = db.cursor()  # type: ignore[no-untyped-call]
    # Names come from the models and values are bound or escaped, never interpolated.
    if _is_postgres(db):
        text = _copy_text(fields, rows)
        # Rows are almost never stored already (only a batch delivered again is): COPY them
        # straight in, and only if one conflicts undo that and go the long way round. Outside
        # a transaction the COPY is one of its own: one round trip, no BEGIN and COMMIT.
        try:
            with db.atomic() if db.in_transaction() else contextlib.nullcontext():
                cursor.copy_expert(f'COPY "{table}" ({columns}) FROM STDIN', io.StringIO(text))
            return
        except Exception as exc:
            if getattr(exc, "pgcode", None) != _UNIQUE_VIOLATION:
                raise
        # COPY into a per-session staging table, then one INSERT ... SELECT: the cheapest way
        # in, for the client and the server, that can still skip conflicting rows.
        staging = f"_incoming_{table}"
        with db.atomic():
            cursor.execute(f'CREATE TEMP TABLE IF NOT EXISTS "{staging}" (LIKE "{table}")')
            cursor.copy_expert(f'COPY "{staging}" ({columns}) FROM STDIN', io.StringIO(text))
            cursor.execute(
                f'INSERT INTO "{table}" ({columns}) SELECT {columns} '  # noqa: S608
                f'FROM "{staging}" ON CONFLICT DO NOTHING'
            )
            cursor.execute(f'TRUNCATE "{staging}"')  # empty for the next call, in any transaction
        return
    rows = _json_values(fields, rows)
    # SQLite stores JSON through json(), as peewee does.
    marks = ", ".join("json(?)" if isinstance(field, pw.JSONField) else "?" for field in fields)
    sql = f'INSERT INTO "{table}" ({columns}) VALUES ({marks}) ON CONFLICT DO NOTHING'  # noqa: S608
    with db.atomic():
        cursor.executemany(sql, rows)


def insert_new(
    db: pw.Database,
    fields: Sequence[pw.Field],
    rows: Sequence[Sequence[Any]],
    returning: Sequence[pw.Field],
) -> list[tuple[Any, ...]]:
    """``INSERT`` ``rows`` (one value per field, in order, no JSON fields), skipping each that
    conflicts with a row already stored, and answer the ``returning`` fields of the rows this
    call inserted. On PostgreSQL that is one statement and one round trip."""
    if not rows:
        return []
    table = fields[0].model._meta.table_name
    names = [f'"{field.column_name}"' for field in fields]
    columns = ", ".join(names)
    picks = [_position(fields, field) for field in returning]
    cursor = db.cursor()  # type: ignore[no-untyped-call]
    # Names come from the models and values are bound, never interpolated.
    if _is_postgres(db):
        cursor.execute(
            f'INSERT INTO "{table}" ({columns}) '  # noqa: S608
            f"SELECT * FROM {_unnest(db, fields, columns)} ON CONFLICT DO NOTHING "
            f"RETURNING {', '.join(names[i] for i in picks)}",
            _arrays(rows, len(fields)),
        )
        return [tuple(row) for row in cursor.fetchall()]
    marks = ", ".join("?" * len(fields))
    sql = f'INSERT INTO "{table}" ({columns}) VALUES ({marks}) ON CONFLICT DO NOTHING'  # noqa: S608
    inserted = []
    for row in rows:
        cursor.execute(sql, row)
        if cursor.rowcount:
            inserted.append(row)
    return [tuple(row[i] for i in picks) for row in inserted]


def _position(fields: Sequence[pw.Field], field: pw.Field) -> int:
    # By identity: a field's ``==`` builds an SQL expression.
    return next(i for i, candidate in enumerate(fields) if candidate is field)


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_COPY_SPECIALS = ("\\", "\t", "\n", "\r")


def _copy_value(value: Any) -> str:
    """One field in COPY's text format (JSON values arrive already as JSON text)."""
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, dt.datetime):
        return value.isoformat(" ")
    if not isinstance(value, str):
        return str(value)
    return value.translate(_COPY_ESCAPES)


def _copy_text(fields: Sequence[pw.Field], rows: Sequence[Sequence[Any]]) -> str:
    """``rows`` in COPY's text format, JSON fields' values as JSON text. Built column by
    column: a column of one plain type is converted in one pass the interpreter makes in C,
    which for thousands of rows costs a fraction of converting value by value."""
    columns = _columns(rows, len(fields))
    texts = [
        _copy_column(
            [None if value is None else jsontext.dumps_text(value) for value in column]
            if isinstance(field, pw.JSONField)
            else column
        )
        for field, column in zip(fields, columns, strict=True)
    ]
    return "\n".join(map("\t".join, zip(*texts, strict=True))) + "\n"


def _copy_column(values: list[Any]) -> list[str]:
    kinds = set(map(type, values))
    if kinds == {str}:
        joined = "".join(values)
        if not any(special in joined for special in _COPY_SPECIALS):
            return values
    elif kinds in ({int}, {dt.datetime}):
        return list(map(str, values))  # str() of a datetime is isoformat(" ")
    return list(map(_copy_value, values))


def select_matching(
    db: pw.Database,
    columns: Sequence[pw.Field],
    keys: Sequence[pw.Field],
    values: Sequence[Sequence[Any]],
    page_size: int = 500,
) -> list[tuple[Any, ...]]:
    """``columns`` of the stored rows whose ``keys`` equal one of ``values`` (distinct tuples of
    key values, in the order of ``keys``): only those rows are read, through the keys' index,
    whatever else the table holds."""
    if not values:
        return []
    table = keys[0].model._meta.table_name
    selected = ", ".join(f't."{column.column_name}"' for column in columns)
    names = ", ".join(f"k{i}" for i in range(len(keys)))
    match = " AND ".join(f't."{key.column_name}" = v.k{i}' for i, key in enumerate(keys))
    cursor = db.cursor()  # type: ignore[no-untyped-call]
    # Names come from the models and values are bound, never interpolated.
    if _is_postgres(db):
        # Each key looked up through the index (OFFSET 0 keeps the planner from turning the
        # lookups into a join): a hash join over a new or small table's every row would cost
        # ten times as much for a batch.
        cursor.execute(
            f"SELECT {selected} FROM {_unnest(db, keys, names)} "  # noqa: S608
            f'CROSS JOIN LATERAL (SELECT * FROM "{table}" AS t WHERE {match} OFFSET 0) AS t',
            _arrays(values, len(keys)),
        )
        return [tuple(row) for row in cursor.fetchall()]
    # A join, not ``(keys) IN (VALUES ...)``: SQLite scans the whole table for the latter.
    marks = "(" + ", ".join("?" * len(keys)) + ")"
    rows: list[tuple[Any, ...]] = []
    for start in range(0, len(values), page_size):
        page = values[start : start + page_size]
        cursor.execute(
            f"WITH v({names}) AS (VALUES {', '.join([marks] * len(page))}) "  # noqa: S608
            f'SELECT {selected} FROM v JOIN "{table}" AS t ON {match}',
            [value for row in page for value in row],
        )
        rows.extend(tuple(row) for row in cursor.fetchall())
    return rows
