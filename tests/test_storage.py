"""Storage: the schema migrations and the models, on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import peewee as pw
import pytest
from playhouse.pool import PooledDatabase

from core.storage import (
    EventRecord,
    FirstInteraction,
    Message,
    MessageRecipient,
    TenantSettings,
    connect_database,
    first_open_times,
    migrate,
)
from core.storage.database import MIGRATIONS, SchemaVersion
from tests.conftest import postgres_url
from tests.postgres import fresh_database

TABLES = {
    "schema_version",
    "tenant_settings",
    "messages",
    "message_recipients",
    "events",
    "first_interactions",
    "suppressions",
}

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database: a new SQLite file, or a new database on the PostgreSQL server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'scaisend.db'}"
    else:
        with fresh_database(postgres_url()) as url:
            yield url


def close(db: pw.Database) -> None:
    if isinstance(db, PooledDatabase):
        db.close_all()
    elif not db.is_closed():
        db.close()


@pytest.fixture
def db(database_url: str) -> Iterator[pw.Database]:
    database = connect_database(database_url)
    try:
        yield database
    finally:
        close(database)


@pytest.fixture
def migrated(db: pw.Database) -> Iterator[pw.Database]:
    migrate(db)
    with db.connection_context():
        yield db


def naive_utc(*args: int) -> dt.datetime:
    return dt.datetime(*args)  # the models store naive UTC on purpose


def stored_version(db: pw.Database) -> list[int]:
    with db.connection_context():
        return [row.version for row in SchemaVersion.select()]


# --- migrations --------------------------------------------------------------------------------


def test_migrate_creates_the_schema(db):
    assert migrate(db) == len(MIGRATIONS)
    with db.connection_context():
        assert set(db.get_tables()) >= TABLES
        columns = {column.name for column in db.get_columns("events")}
    assert columns >= {"id", "type", "tenant", "message_id", "recipient", "timestamp", "data"}
    assert stored_version(db) == [len(MIGRATIONS)]


def test_migrate_twice_keeps_the_version_and_the_data(db):
    migrate(db)
    with db.connection_context():
        TenantSettings.create(tenant="acme", overrides={"open_tracking": {"enable": False}})
    assert migrate(db) == len(MIGRATIONS)
    assert stored_version(db) == [len(MIGRATIONS)]
    with db.connection_context():
        (row,) = TenantSettings.select()
    assert row.overrides == {"open_tracking": {"enable": False}}


def test_migrate_upgrades_an_older_schema(db):
    with db.connection_context():
        db.create_tables([SchemaVersion])
        MIGRATIONS[0](db)
        SchemaVersion.create(id=1, version=1)
        Message.create(id="m1", tenant="acme")
        assert "first_interactions" not in db.get_tables()
    assert migrate(db) == len(MIGRATIONS)
    assert stored_version(db) == [len(MIGRATIONS)]
    with db.connection_context():
        assert set(db.get_tables()) >= TABLES
        assert [m.id for m in Message.select()] == ["m1"]


def test_concurrent_migrations_from_threads(db):
    threads = 4
    barrier = threading.Barrier(threads)
    results: list[object] = []

    def run() -> None:
        barrier.wait(timeout=60)
        try:
            results.append(migrate(db))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            results.append(exc)
        finally:
            db.close()  # this thread's connection

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=90)
    assert results == [len(MIGRATIONS)] * threads
    assert stored_version(db) == [len(MIGRATIONS)]
    with db.connection_context():
        assert set(db.get_tables()) >= TABLES


def _migrate_in_process(url: str, barrier: Any, results: Any) -> None:
    db = connect_database(url)
    barrier.wait(timeout=60)
    try:
        results.put(migrate(db))
    except Exception as exc:  # noqa: BLE001 - sent back to the test
        results.put(repr(exc))
    finally:
        close(db)


def test_concurrent_migrations_from_processes(database_url):
    """Several servers starting at once on one database all come up on the same schema."""
    processes = 4
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes)
    results = context.Queue()
    children = [
        context.Process(target=_migrate_in_process, args=(database_url, barrier, results))
        for _ in range(processes)
    ]
    for child in children:
        child.start()
    try:
        outcomes = [results.get(timeout=90) for _ in children]
    finally:
        for child in children:
            child.join(timeout=30)
            if child.is_alive():
                child.kill()
    assert outcomes == [len(MIGRATIONS)] * processes
    assert [child.exitcode for child in children] == [0] * processes
    db = connect_database(database_url)
    try:
        assert stored_version(db) == [len(MIGRATIONS)]
        with db.connection_context():
            assert set(db.get_tables()) >= TABLES
    finally:
        close(db)


# --- models ------------------------------------------------------------------------------------

AWKWARD_JSON = {
    "unicode": "Grüße, 你好, 🎉",
    "quotes": 'say "hi"\n\tthen \\ leave',
    "nested": {"list": [1, 2.5, True, False, None, "x", {"deep": []}], "empty": {}},
    "big": 2**53 + 1,
    "negative": -7,
}


def test_tenant_settings_round_trip(migrated):
    at = naive_utc(2024, 2, 29, 23, 59, 59, 999_999)
    TenantSettings.create(tenant="acme", overrides=AWKWARD_JSON, updated_at=at)
    TenantSettings.create(tenant="empty")
    acme = TenantSettings.get_by_id("acme")
    assert acme.overrides == AWKWARD_JSON
    assert (acme.updated_at, acme.updated_at.tzinfo) == (at, None)
    empty = TenantSettings.get_by_id("empty")
    assert empty.overrides == {}
    assert empty.updated_at.tzinfo is None


def test_default_timestamps_are_naive_utc(migrated):
    before = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    Message.create(id="m1", tenant="acme")
    after = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    created = Message.get_by_id("m1").created_at
    assert created.tzinfo is None
    assert before <= created <= after


def test_message_and_recipients_round_trip(migrated):
    created = naive_utc(2024, 1, 1, 0, 0, 0)
    Message.create(
        id="m1",
        tenant="acme",
        created_at=created,
        subject="Grüße 🎉",
        settings={"click_tracking": {"enable": True, "utm": {"source": "news"}}},
        data=AWKWARD_JSON,
    )
    for number, email in enumerate(["ann@example.com", "bob@example.com"]):
        MessageRecipient.create(message="m1", number=number, email=email)
    message = Message.get_by_id("m1")
    assert (message.tenant, message.subject, message.created_at) == ("acme", "Grüße 🎉", created)
    assert message.settings == {"click_tracking": {"enable": True, "utm": {"source": "news"}}}
    assert message.data == AWKWARD_JSON
    recipients = [(r.number, r.email) for r in message.recipients.order_by(MessageRecipient.number)]
    assert recipients == [(0, "ann@example.com"), (1, "bob@example.com")]


def test_a_recipient_number_is_unique_per_message(migrated):
    Message.create(id="m1", tenant="acme")
    MessageRecipient.create(message="m1", number=0, email="ann@example.com")
    with pytest.raises(pw.IntegrityError), migrated.atomic():
        MessageRecipient.create(message="m1", number=0, email="bob@example.com")


def test_deleting_a_message_deletes_its_recipients(migrated):
    Message.create(id="m1", tenant="acme")
    Message.create(id="m2", tenant="acme")
    MessageRecipient.create(message="m1", number=0, email="ann@example.com")
    MessageRecipient.create(message="m2", number=0, email="bob@example.com")
    Message.delete().where(Message.id == "m1").execute()
    assert [r.email for r in MessageRecipient.select()] == ["bob@example.com"]


def test_event_records_round_trip_and_order_by_time(migrated):
    base = naive_utc(2024, 3, 10, 12, 0, 0)
    times = [
        base + dt.timedelta(seconds=1),  # whole seconds: no fractional part stored
        base + dt.timedelta(microseconds=1),
        base,
        base + dt.timedelta(microseconds=999_999),
    ]
    rows = [
        {
            "id": f"e{n}",
            "type": "open",
            "tenant": "acme",
            "message_id": "m1",
            "recipient": "ann@example.com",
            "timestamp": at,
            "data": {"n": n, **AWKWARD_JSON},
            "bot": {"verdict": "apple_mpp", "score": 0.9} if n % 2 else None,
        }
        for n, at in enumerate(times)
    ]
    EventRecord.insert_many(rows).execute()
    stored = {
        row.id: {
            "id": row.id,
            "type": row.type,
            "tenant": row.tenant,
            "message_id": row.message_id,
            "recipient": row.recipient,
            "timestamp": row.timestamp,
            "data": row.data,
            "bot": row.bot,
        }
        for row in EventRecord.select()
    }
    assert stored == {row["id"]: row for row in rows}
    assert all(row["timestamp"].tzinfo is None for row in stored.values())

    in_order = [e.id for e in EventRecord.select().order_by(EventRecord.timestamp)]
    assert in_order == ["e2", "e1", "e3", "e0"]
    later = EventRecord.select().where(EventRecord.timestamp > base + dt.timedelta(microseconds=1))
    assert sorted(e.id for e in later) == ["e0", "e3"]


def test_first_interaction_keeps_the_first_event(migrated):
    at = naive_utc(2024, 5, 1, 9, 0, 0, 500)
    key = {"message_id": "m1", "recipient_number": 3, "kind": "click", "key_hash": "ab" * 32}
    FirstInteraction.insert(**key, event_id="first", at=at).execute()
    FirstInteraction.insert(
        **key, event_id="second", at=at + dt.timedelta(seconds=1)
    ).on_conflict_ignore().execute()
    FirstInteraction.insert(**{**key, "kind": "open"}, event_id="other", at=at).execute()
    rows = {(r.kind, r.event_id, r.at) for r in FirstInteraction.select()}
    assert rows == {("click", "first", at), ("open", "other", at)}


def interaction(message: str, number: int, kind: str, key: str, at: dt.datetime) -> None:
    FirstInteraction.create(
        message_id=message, recipient_number=number, kind=kind, key_hash=key, event_id=key, at=at
    )


def test_first_open_times_are_each_stored_recipients_earliest_open(migrated):
    at = naive_utc(2024, 5, 1, 9, 0, 0, 500)
    Message.create(id="m1", tenant="acme")
    Message.create(id="m2", tenant="acme")
    for message, number in (("m1", 0), ("m1", 1), ("m1", 2), ("m2", 0)):
        MessageRecipient.create(message=message, number=number, email=f"r{number}@{message}")
    interaction("m1", 0, "open", "a", at + dt.timedelta(seconds=5))
    interaction("m1", 0, "open", "b", at)  # an open with another key, earlier
    interaction("m1", 1, "click", "c", at)  # a click is not an open
    interaction("m1", 2, "open", "d", at + dt.timedelta(hours=1))
    interaction("m1", 7, "open", "e", at)  # no such recipient stored
    interaction("m2", 0, "open", "f", at + dt.timedelta(days=1))
    assert first_open_times("m1") == {0: at, 2: at + dt.timedelta(hours=1)}
    assert first_open_times("m2") == {0: at + dt.timedelta(days=1)}
    assert first_open_times("m3") == {}
    MessageRecipient.delete().where(MessageRecipient.number == 2).execute()
    assert first_open_times("m1") == {0: at}


def test_migrate_keeps_first_open_times_stored_on_recipients(db):
    """A database from before first-open times were read from the first interactions: its
    times stay readable, and opens already claimed keep their owner."""
    at = naive_utc(2024, 5, 1, 9, 0, 0, 500)
    hashed_empty_key = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    with db.connection_context():
        db.create_tables([SchemaVersion])
        for step in MIGRATIONS[:3]:
            step(db)
        SchemaVersion.create(id=1, version=3)
        db.execute_sql("ALTER TABLE message_recipients ADD COLUMN first_open_at TIMESTAMP")
        Message.create(id="m1", tenant="acme")
        for number in range(3):
            MessageRecipient.create(message="m1", number=number, email=f"r{number}@m1")
        interaction("m1", 0, "open", hashed_empty_key, at)
        db.execute_sql(
            "UPDATE message_recipients SET first_open_at = "
            + ("%s" if isinstance(db, pw.PostgresqlDatabase) else "?")
            + " WHERE number IN (0, 1)",
            (at,),
        )
    assert migrate(db) == len(MIGRATIONS)
    with db.connection_context():
        assert "first_open_at" not in {c.name for c in db.get_columns("message_recipients")}
        assert first_open_times("m1") == {0: at, 1: at}
        owners = {
            (r.recipient_number, r.event_id)
            for r in FirstInteraction.select().where(FirstInteraction.kind == "open")
        }
    assert owners == {(0, hashed_empty_key), (1, "")}
