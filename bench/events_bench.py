"""Events per second the event bus makes durable: journal + ``database`` sink, batched.

* ScaiSend: an :class:`EventBus` with this node's journal and the ``database`` sink (and the
  enrichment step the server runs before sinks), in two arrangements: ``served``, as
  ``scaisend serve`` runs it (this process journals; the delivery child process, started the
  way the server starts it, enriches and stores), and ``one process`` (the bus's own sink
  threads in this process, as the command line and the Python API run it). The clock
  runs from the first ``emit`` until ``flush`` returns, that is until every event is both in
  the journal and committed to the database. Two kinds of event:
  ``plain`` (no recipient number: enrichment has nothing to look up) and ``open`` (as the pixel
  route emits them, for recipients stored beforehand as a send stores them, four per message:
  enrichment adds each address, decides the unique open and records the first-open time).
* Baselines, in the same run, into an empty ``events`` table of the same database: the same
  rows with plain peewee, ``insert_many`` in one transaction per 1,000 rows, and one row per
  transaction (the naive way; measured on fewer rows, it is slow).

SQLite runs with the server's pragmas (WAL, ``synchronous=FULL``), so every commit is durable;
PostgreSQL with its defaults (``fsync`` and ``synchronous_commit`` on). PostgreSQL runs when
``SCAISEND_TEST_POSTGRES_URL`` is set; each measurement gets a database of its own there.

Run ``python bench/events_bench.py`` in the bench environment (``tox -e bench``);
``--events N`` changes the count (default 50,000); ``--repeats N`` the rounds of every
measurement (default 3; medians are shown, with the bus's range); ``--database`` and
``--kind`` measure part of the table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import _common
import peewee as pw
import psycopg2
import yaml
from _common import fmt_rate, fmt_ratio, table
from playhouse.pool import PooledDatabase
from psycopg2 import sql

from core import logs
from core.delivery import DeliveryProcess
from core.enrichment import EventEnricher
from core.events import Event, EventBus, Journal
from core.runtime import Runtime, load
from core.storage import EventRecord, Message, MessageRecipient, connect_database, migrate
from core.storage.database import database_proxy
from core.testing import base_document, plugin_manager
from sinks.database import DatabaseSink

GOALS = {"sqlite": 10_000.0, "postgresql": 20_000.0}
BASELINE_BATCH = 1_000
ONE_BY_ONE_ROWS = 1_000


def make_events(kind: str, count: int) -> list[Event]:
    if kind == "plain":
        return [
            Event(type="delivered", tenant="acme", message_id=f"m{n:07d}", data={"n": n})
            for n in range(count)
        ]
    return [
        Event(
            type="open",
            tenant="acme",
            message_id=f"m{n // 4:07d}",
            data={
                "recipient_number": n % 4,
                "dedupe_key": "",
                "user_agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Thunderbird/115.0",
                "ip": "203.0.113.7",
            },
        )
        for n in range(count)
    ]


def rows_of(events: Sequence[Event]) -> list[dict[str, Any]]:
    """The rows the database sink writes, built the same way."""
    return [
        {
            "id": event.id,
            "type": event.type,
            "tenant": event.tenant,
            "message_id": event.message_id,
            "recipient": event.recipient,
            "timestamp": event.timestamp.replace(tzinfo=None),
            "data": dict(event.data),
            "bot": None,
        }
        for event in events
    ]


def close(db: pw.Database) -> None:
    if isinstance(db, PooledDatabase):
        db.close_all()
    elif not db.is_closed():
        db.close()


@contextmanager
def scratch_postgres(url: str) -> Iterator[str]:
    """A new database beside the one ``url`` names, dropped afterwards.

    The drop is retried for a while: right after a large insert, autovacuum may be working on
    the database, and only a superuser could end that.
    """
    name = f"scaisend_bench_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(url)
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        yield urlunsplit(urlsplit(url)._replace(path=f"/{name}"))
    finally:
        deadline = time.monotonic() + 60
        while True:
            try:
                with admin.cursor() as cursor:
                    cursor.execute(
                        sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name))
                    )
                break
            except psycopg2.Error:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        admin.close()


@contextmanager
def empty_database(backend: str, scratch: Path) -> Iterator[tuple[pw.Database, str]]:
    """A new, migrated database of the given kind and its URL, dropped afterwards."""
    if backend == "sqlite":
        directory = Path(tempfile.mkdtemp(dir=scratch))
        url = f"sqlite:///{directory / 'scaisend.db'}"
        db = connect_database(url)
        migrate(db)
        try:
            yield db, url
        finally:
            close(db)
        return
    with scratch_postgres(os.environ["SCAISEND_TEST_POSTGRES_URL"]) as url:
        db = connect_database(url)
        migrate(db)
        try:
            yield db, url
        finally:
            close(db)


def stored_count(db: pw.Database) -> int:
    with db.connection_context():
        return int(EventRecord.select().count())


def store_recipients(db: pw.Database, events: Sequence[Event]) -> None:
    """The messages and recipients the events are about, as a send leaves them (untimed)."""
    pairs = sorted(
        {(e.message_id, e.data["recipient_number"]) for e in events if "recipient_number" in e.data}
    )
    if not pairs:
        return
    with db.connection_context(), db.atomic():
        messages = sorted({message for message, _ in pairs})
        for start in range(0, len(messages), 1000):
            Message.insert_many(
                [{"id": m, "tenant": "acme"} for m in messages[start : start + 1000]]
            ).execute()
        for start in range(0, len(pairs), 1000):
            MessageRecipient.insert_many(
                [
                    {"message": m, "number": n, "email": f"r{n}@{m}.example"}
                    for m, n in pairs[start : start + 1000]
                ]
            ).execute()


def run_bus(db: pw.Database, events: list[Event], scratch: Path) -> float:
    store_recipients(db, events)
    journal = Journal(Path(tempfile.mkdtemp(dir=scratch)) / "journal")
    enricher = EventEnricher(db)
    bus = EventBus(
        journal,
        [DatabaseSink("database", db)],
        enrich=enricher,
        read_ahead=enricher.overlaps_storing,  # as the server builds it
    )
    bus.start()
    try:
        started = time.perf_counter()
        for event in events:
            bus.emit(event)
        if not bus.flush(timeout=600):
            raise RuntimeError(f"the bus did not finish: {bus.status()}")
        journal.sync()  # the journal's own durability counts too
        elapsed = time.perf_counter() - started
    finally:
        bus.stop()
    if stored_count(db) != len(events):
        raise RuntimeError("the database does not hold every event")
    return len(events) / elapsed


def run_served(db: pw.Database, url: str, events: list[Event], scratch: Path) -> float:
    """The bus as ``scaisend serve`` runs it: this process journals, and a child process
    (``core.delivery``, started the way the server starts it) enriches and stores.

    One event goes through first, untimed, so the child's start-up is not counted: a server
    starts it once.
    """
    store_recipients(db, events)
    data_dir = Path(tempfile.mkdtemp(dir=scratch))
    document = base_document(data_dir)
    document["server"]["database_url"] = url
    document["server"]["sinks"] = [{"type": "database"}]
    config_path = data_dir / "scaisend.yaml"
    config_path.write_text(yaml.safe_dump(document))
    plugins, config = load(config_path, pm=plugin_manager())
    runtime = Runtime.open(config, plugins)
    bus = runtime.bus
    assert bus is not None
    bus.deliver_elsewhere()
    delivery = DeliveryProcess(config_path, "warning")
    bus.start()
    delivery.start()
    try:
        bus.emit(Event(type="delivered", tenant="acme", message_id="warm-up", data={}))
        if not bus.flush(timeout=120):
            raise RuntimeError(f"the delivery process did not start: {bus.status()}")
        started = time.perf_counter()
        for event in events:
            bus.emit(event)
        if not bus.flush(timeout=600):
            raise RuntimeError(f"the delivery process did not finish: {bus.status()}")
        bus.journal.sync()
        elapsed = time.perf_counter() - started
    finally:
        delivery.stop()
        runtime.close()
        close(runtime.db)  # every pooled connection, so the scratch database can be dropped
        database_proxy.initialize(db)  # the models were bound to the runtime's connection
    if stored_count(db) != len(events) + 1:
        raise RuntimeError("the database does not hold every event")
    return len(events) / elapsed


def run_insert_many(db: pw.Database, events: list[Event]) -> float:
    started = time.perf_counter()
    rows = rows_of(events)
    with db.connection_context():
        for start in range(0, len(rows), BASELINE_BATCH):
            with db.atomic():
                EventRecord.insert_many(rows[start : start + BASELINE_BATCH]).execute()
    elapsed = time.perf_counter() - started
    if stored_count(db) != len(events):
        raise RuntimeError("the database does not hold every row")
    return len(events) / elapsed


def run_one_by_one(db: pw.Database, events: list[Event]) -> float:
    sample = events[:ONE_BY_ONE_ROWS]
    started = time.perf_counter()
    rows = rows_of(sample)
    with db.connection_context():
        for row in rows:
            with db.atomic():
                EventRecord.insert(row).execute()
    return len(sample) / (time.perf_counter() - started)


def measure(
    backend: str, name: str, scratch: Path, run: Callable[[pw.Database, str], float]
) -> float:
    with empty_database(backend, scratch) as (db, url):
        rate = run(db, url)
    print(f"  {backend:<10} {name:<44} {fmt_rate(rate):>10} events/s", flush=True)
    return rate


def goal_text(rate: float, goal: float) -> str:
    return f"{fmt_rate(goal)} {'met' if rate >= goal else 'MISSED'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=50_000, help="events per measurement")
    parser.add_argument(
        "--database", choices=sorted(GOALS), action="append", help="only these (repeatable)"
    )
    parser.add_argument(
        "--kind", choices=("plain", "open"), action="append", help="only these (repeatable)"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="rounds of every measurement (medians shown)"
    )
    args = parser.parse_args()
    logs.configure("warning", json=True)
    backends = ["sqlite"]
    if os.environ.get("SCAISEND_TEST_POSTGRES_URL"):
        backends.append("postgresql")
    else:
        print("SCAISEND_TEST_POSTGRES_URL is not set: PostgreSQL is not measured")
    backends = [backend for backend in backends if backend in (args.database or backends)]
    kinds = args.kind or ["plain", "open"]

    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory(prefix="events-bench-") as tmp:
        scratch = Path(tmp)
        for backend in backends:
            plain = make_events("plain", args.events)
            baselines: list[float] = []
            naive: list[float] = []
            bus: dict[tuple[str, str], list[float]] = {}
            arrangements: list[tuple[str, Callable[[pw.Database, str, list[Event]], float]]] = [
                ("served", lambda db, url, events: run_served(db, url, events, scratch)),
                ("one process", lambda db, url, events: run_bus(db, events, scratch)),
            ]
            # Round by round, so that whatever else the machine does falls on every side.
            for _ in range(args.repeats):
                baselines.append(
                    measure(
                        backend,
                        f"baseline: insert_many, {BASELINE_BATCH:,} rows/transaction",
                        scratch,
                        lambda db, _, events=plain: run_insert_many(db, events),
                    )
                )
                naive.append(
                    measure(
                        backend,
                        "baseline: one row per transaction",
                        scratch,
                        lambda db, _, events=plain: run_one_by_one(db, events),
                    )
                )
                for kind in kinds:
                    events = plain if kind == "plain" else make_events(kind, args.events)
                    for arrangement, run in arrangements:
                        bus.setdefault((kind, arrangement), []).append(
                            measure(
                                backend,
                                f"bus ({arrangement}), {kind} events",
                                scratch,
                                lambda db, url, events=events, run=run: run(db, url, events),
                            )
                        )
            baseline = statistics.median(baselines)
            one_by_one = statistics.median(naive)
            for (kind, arrangement), rates in bus.items():
                rate = statistics.median(rates)
                rows.append(
                    [
                        backend,
                        f"{kind} events",
                        arrangement,
                        fmt_rate(rate),
                        f"{fmt_rate(min(rates))} to {fmt_rate(max(rates))}",
                        fmt_rate(baseline),
                        fmt_ratio(rate / baseline),
                        fmt_rate(one_by_one),
                        fmt_ratio(rate / one_by_one),
                        goal_text(rate, GOALS[backend]),
                    ]
                )
    print()
    print(
        table(
            [
                "database",
                "events",
                "sinks run in",
                "bus events/s",
                "range",
                "insert_many/s",
                "bus/insert_many",
                "1 row/txn /s",
                "bus/1 row/txn",
                "goal",
            ],
            rows,
            left=2,
        )
    )
    print(
        f"\n{args.events:,} events per measurement; one-row baseline on {ONE_BY_ONE_ROWS:,}; "
        f"each measured {args.repeats} time(s), round by round: medians, with the bus's range"
    )
    print(_common.footer())


if __name__ == "__main__":
    main()
