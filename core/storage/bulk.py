"""Batched reads and writes handed to the database driver as plain tuples.

For thousands of rows, building a peewee query (one SQL node per value) costs more than the
database's own work on them. These helpers write the statement once and let the driver run it
over every row. On SQLite (in process, no round trips) that is ``executemany``, or a statement
per page of rows. On PostgreSQL inserts go through ``COPY`` (the cheapest way in, for client
and server); updates and reads send each column as one array parameter, turned back into rows
by ``unnest``: one statement and one round trip per batch, the arrays adapted by the driver in
C. The caller holds the connection and the transaction.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
from collections.abc import Sequence
from typing import Any

import peewee as pw

_UNIQUE_VIOLATION = "23505"


def _is_postgres(db: pw.Database) -> bool:
    return isinstance(db, pw.PostgresqlDatabase)


def _unnest(db: pw.Database, fields: Sequence[pw.Field], names: str) -> str:
    """``unnest(%s::type[], ...) AS v(names)``: one typed array parameter per field."""
    types = db.field_types
    arrays = ", ".join(f"%s::{types.get(field.field_type, field.field_type)}[]" for field in fields)
    return f"unnest({arrays}) AS v({names})"


def _columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    """Rows turned into one list per column: the arrays ``_unnest`` takes."""
    return [list(column) for column in zip(*rows, strict=True)] if rows else [[]] * width


def _json_values(
    fields: Sequence[pw.Field], rows: Sequence[Sequence[Any]]
) -> Sequence[Sequence[Any]]:
    """JSON fields' Python values as JSON text, as peewee stores them."""
    is_json = [isinstance(field, pw.JSONField) for field in fields]
    if not any(is_json):
        return rows
    return [
        tuple(
            json.dumps(value) if json_value and value is not None else value
            for json_value, value in zip(is_json, row, strict=True)
        )
        for row in rows
    ]


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
    rows = _json_values(fields, rows)
    cursor = db.cursor()  # type: ignore[no-untyped-call]
    # Names come from the models and values are bound or escaped, never interpolated.
    if _is_postgres(db):
        text = "".join(map(_copy_line, rows))
        # Rows are almost never stored already (only a batch delivered again is): COPY them
        # straight in, and only if one conflicts undo that and go the long way round.
        try:
            with db.atomic():
                cursor.copy_expert(f'COPY "{table}" ({columns}) FROM STDIN', io.StringIO(text))
            return
        except Exception as exc:
            if getattr(exc, "pgcode", None) != _UNIQUE_VIOLATION:
                raise
        # COPY into a per-session staging table, then one INSERT ... SELECT: the cheapest way
        # in, for the client and the server, that can still skip conflicting rows.
        staging = f"_incoming_{table}"
        cursor.execute(f'CREATE TEMP TABLE IF NOT EXISTS "{staging}" (LIKE "{table}")')
        cursor.copy_expert(f'COPY "{staging}" ({columns}) FROM STDIN', io.StringIO(text))
        cursor.execute(
            f'INSERT INTO "{table}" ({columns}) SELECT {columns} FROM "{staging}" '  # noqa: S608
            "ON CONFLICT DO NOTHING"
        )
        cursor.execute(f'TRUNCATE "{staging}"')  # empty for the next call, even in this transaction
        return
    # SQLite stores JSON through json(), as peewee does.
    marks = ", ".join("json(?)" if isinstance(field, pw.JSONField) else "?" for field in fields)
    sql = f'INSERT INTO "{table}" ({columns}) VALUES ({marks}) ON CONFLICT DO NOTHING'  # noqa: S608
    cursor.executemany(sql, rows)


@dataclasses.dataclass(frozen=True)
class SetFromInserted:
    """Part of an insert: on the stored rows of ``target``'s table whose ``keys`` equal an
    inserted row's ``sources``, set ``target`` to that row's ``value`` unless already set; only
    for inserted rows whose ``when[0]`` equals ``when[1]``, each naming a distinct target row."""

    target: pw.Field
    keys: tuple[pw.Field, ...]
    sources: tuple[pw.Field, ...]
    value: pw.Field
    when: tuple[pw.Field, Any]


def insert_new(
    db: pw.Database,
    fields: Sequence[pw.Field],
    rows: Sequence[Sequence[Any]],
    returning: Sequence[pw.Field],
    then: SetFromInserted | None = None,
) -> list[tuple[Any, ...]]:
    """``INSERT`` ``rows`` (one value per field, in order, no JSON fields), skipping each that
    conflicts with a row already stored, and answer the ``returning`` fields of the rows this
    call inserted. ``then`` is done with the insert. On PostgreSQL all of it is one statement
    and one round trip: the insert, ``then``'s update on what it inserted, and the answer."""
    if not rows:
        return []
    table = fields[0].model._meta.table_name
    names = [f'"{field.column_name}"' for field in fields]
    columns = ", ".join(names)
    picks = [_position(fields, field) for field in returning]
    cursor = db.cursor()  # type: ignore[no-untyped-call]
    # Names come from the models and values are bound, never interpolated.
    if _is_postgres(db):
        update, parameters = "", _columns(rows, len(fields))
        if then is not None:
            update = _update_from_inserted(then) + " "
            parameters.append(then.when[1])
        cursor.execute(
            f'WITH ins AS (INSERT INTO "{table}" ({columns}) '  # noqa: S608
            f"SELECT * FROM {_unnest(db, fields, columns)} ON CONFLICT DO NOTHING "
            f"RETURNING {', '.join(names[i] for i in picks)}{_also_returned(fields, then)}) "
            f"{update}SELECT {', '.join(names[i] for i in picks)} FROM ins",
            parameters,
        )
        return [tuple(row) for row in cursor.fetchall()]
    marks = ", ".join("?" * len(fields))
    sql = f'INSERT INTO "{table}" ({columns}) VALUES ({marks}) ON CONFLICT DO NOTHING'  # noqa: S608
    inserted = []
    for row in rows:
        cursor.execute(sql, row)
        if cursor.rowcount:
            inserted.append(row)
    if then is not None:
        value, when = _position(fields, then.value), _position(fields, then.when[0])
        sources = [_position(fields, field) for field in then.sources]
        set_where_null(
            db,
            then.target,
            then.keys,
            [
                (row[value], *(row[i] for i in sources))
                for row in inserted
                if row[when] == then.when[1]
            ],
        )
    return [tuple(row[i] for i in picks) for row in inserted]


def _position(fields: Sequence[pw.Field], field: pw.Field) -> int:
    # By identity: a field's ``==`` builds an SQL expression.
    return next(i for i, candidate in enumerate(fields) if candidate is field)


def _also_returned(fields: Sequence[pw.Field], then: SetFromInserted | None) -> str:
    """The columns ``then`` reads from the inserted rows, returned by the insert for it."""
    if then is None:
        return ""
    needed = (then.value, *then.sources, then.when[0])
    return "".join(f', "{field.column_name}" AS "_{i}"' for i, field in enumerate(needed))


def _update_from_inserted(then: SetFromInserted) -> str:
    """``then`` as a data-modifying ``WITH`` item over ``ins`` (the names ``_also_returned``
    gives), its ``when`` value the statement's last parameter."""
    table = then.target.model._meta.table_name
    column = then.target.column_name
    match = " AND ".join(
        f't."{key.column_name}" = ins."_{i + 1}"' for i, key in enumerate(then.keys)
    )
    return (
        f', upd AS (UPDATE "{table}" AS t SET "{column}" = ins."_0" FROM ins '  # noqa: S608
        f'WHERE {match} AND t."{column}" IS NULL AND ins."_{len(then.keys) + 1}" = %s)'
    )


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


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


def _copy_line(row: Sequence[Any]) -> str:
    return "\t".join(map(_copy_value, row)) + "\n"


def set_where_null(
    db: pw.Database,
    target: pw.Field,
    keys: Sequence[pw.Field],
    rows: Sequence[Sequence[Any]],
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
        cursor.execute(
            f'UPDATE "{table}" AS t SET "{column}" = v.value '  # noqa: S608
            f"FROM {_unnest(db, (target, *keys), f'value, {names}')} "
            f'WHERE {match} AND t."{column}" IS NULL',
            _columns(rows, 1 + len(keys)),
        )
        return
    match = " AND ".join(f'"{key.column_name}" = ?' for key in keys)
    sql = f'UPDATE "{table}" SET "{column}" = ? WHERE {match} AND "{column}" IS NULL'  # noqa: S608
    cursor.executemany(sql, rows)


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
        cursor.execute(
            f'SELECT {selected} FROM {_unnest(db, keys, names)} JOIN "{table}" AS t '  # noqa: S608
            f"ON {match}",
            _columns(values, len(keys)),
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
