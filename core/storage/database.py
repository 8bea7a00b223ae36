"""Opening the database from a URL, and creating or migrating the schema on start."""

from __future__ import annotations

import contextlib
import fcntl
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import urlparse

import peewee as pw
import structlog
from playhouse.db_url import connect

from core.storage.first_opens import OPEN
from core.storage.models import (
    BaseModel,
    EventRecord,
    FirstInteraction,
    Message,
    MessageRecipient,
    Suppression,
    TenantSettings,
    database_proxy,
    interaction_key_hash,
)

log = structlog.get_logger("scaisend.storage")

SQLITE_PRAGMAS = {
    # First, so that every later pragma (switching a new file to WAL takes a write lock) waits
    # for a concurrent opener instead of failing.
    "busy_timeout": 10_000,
    "journal_mode": "wal",
    # FULL: a committed transaction survives power loss, not only a crash of the process.
    "synchronous": "full",
    "foreign_keys": 1,
}


class SchemaVersion(BaseModel):
    id = pw.IntegerField(primary_key=True)
    version = pw.IntegerField()

    class Meta:
        table_name = "schema_version"


Migration = Callable[[pw.Database], None]


def _initial(db: pw.Database) -> None:
    db.create_tables([TenantSettings, Message, MessageRecipient, EventRecord], safe=True)


def _first_interactions(db: pw.Database) -> None:
    db.create_tables([FirstInteraction], safe=True)


def _suppressions(db: pw.Database) -> None:
    db.create_tables([Suppression], safe=True)


def _first_open_times_from_interactions(db: pw.Database) -> None:
    """Drop ``message_recipients.first_open_at``: first-open times are read from the first
    interactions (see core/storage/first_opens.py). A time stored without its interaction
    (none is, unless written by hand) becomes one owned by no event, so it is kept."""
    if "first_open_at" not in {c.name for c in db.get_columns(MessageRecipient._meta.table_name)}:
        return  # created by _initial from the current model
    db.execute_sql(  # type: ignore[no-untyped-call]
        "INSERT INTO first_interactions "
        "(message_id, recipient_number, kind, key_hash, event_id, at) "
        "SELECT message_id, number, %s, %s, '', first_open_at FROM message_recipients "
        "WHERE first_open_at IS NOT NULL ON CONFLICT DO NOTHING".replace("%s", db.param),
        (OPEN, interaction_key_hash("")),
    )
    db.execute_sql("ALTER TABLE message_recipients DROP COLUMN first_open_at")  # type: ignore[no-untyped-call]


MIGRATIONS: Sequence[Migration] = (
    _initial,
    _first_interactions,
    _suppressions,
    _first_open_times_from_interactions,
)
"""Applied in order; index + 1 is the schema version a migration brings the database to."""


def _ensure_wal(path: Path) -> None:
    """Switch a new database file to WAL, one process at a time.

    Changing the journal mode needs an exclusive lock that SQLite does not wait for, so
    servers opening one new file at once would fail with "database is locked". The mode is
    stored in the file: once set, every later connection's pragma is a no-op.
    """
    with (
        open(path.with_name(path.name + ".lock"), "a") as lock,
        contextlib.closing(sqlite3.connect(path, timeout=10)) as connection,
    ):
        fcntl.flock(lock, fcntl.LOCK_EX)
        connection.execute("PRAGMA journal_mode = wal")


def connect_database(url: str) -> pw.Database:
    """Open ``url`` (``sqlite:///path`` or ``postgresql://...``) and bind every model to it."""
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        path = parsed.path[1:] if parsed.path.startswith("/") else parsed.path
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            _ensure_wal(Path(path))
        db = pw.SqliteDatabase(path or ":memory:", pragmas=SQLITE_PRAGMAS)
    elif parsed.scheme in {"postgres", "postgresql"}:
        scheme_rest = url.split("://", 1)[1]
        db = connect(f"postgresql+pool://{scheme_rest}", max_connections=32, stale_timeout=300)
    else:
        raise ValueError(f"unsupported database URL scheme {parsed.scheme!r}")
    database_proxy.initialize(db)
    return db


def migrate(db: pw.Database, extra_models: Sequence[type[pw.Model]] = ()) -> int:
    """Bring the schema up to date; returns the version now in place.

    Safe to run from several processes at once: PostgreSQL serialises the work on an advisory
    lock, SQLite on its write lock.
    """
    # SQLite: take the write lock up front; a deferred transaction that later upgrades its
    # read lock fails at once with "database is locked" instead of waiting its turn.
    atomic = db.atomic("IMMEDIATE") if isinstance(db, pw.SqliteDatabase) else db.atomic()
    with db.connection_context(), atomic:
        if isinstance(db, pw.PostgresqlDatabase):
            db.execute_sql("SELECT pg_advisory_xact_lock(727274)")  # type: ignore[no-untyped-call]
        db.create_tables([SchemaVersion], safe=True)
        row = SchemaVersion.get_or_none(SchemaVersion.id == 1)
        current = row.version if row else 0
        for version, step in enumerate(MIGRATIONS[current:], start=current + 1):
            step(db)
            log.info("storage.migrated", version=version)
        SchemaVersion.insert(id=1, version=len(MIGRATIONS)).on_conflict(
            conflict_target=[SchemaVersion.id], update={SchemaVersion.version: len(MIGRATIONS)}
        ).execute()
        if extra_models:
            db.create_tables(list(extra_models), safe=True)
    return len(MIGRATIONS)


def ping(db: pw.Database) -> None:
    """Raise unless the database answers a trivial query."""
    with db.connection_context():
        db.execute_sql("SELECT 1").fetchone()  # type: ignore[no-untyped-call]
