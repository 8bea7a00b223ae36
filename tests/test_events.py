"""Events: never lost once answered, delivered at least once, and sinks that cannot hold the
server back."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import signal
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import httpx
import peewee as pw
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core import hookimpl
from core.config import SigningKey
from core.events import Event
from core.sinks import SinkType
from core.storage import (
    EventRecord,
    Message,
    MessageRecipient,
    connect_database,
    first_open_times,
)
from core.testing import Harness, base_document
from core.tokens import TokenCodec
from sinks.database import DatabaseSink
from tests.conftest import postgres_url
from tests.postgres import fresh_database
from tests.serving import ScaisendServer, wait_for
from tests.test_storage import close

DEADLINE_SECONDS = 60.0


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'data' / 'scaisend.db'}"
    else:
        with fresh_database(postgres_url()) as url:
            yield url


def stored_events(database_url: str, event_type: str) -> list[EventRecord]:
    db = connect_database(database_url)
    try:
        with db.connection_context():
            return list(EventRecord.select().where(EventRecord.type == event_type))
    except (pw.OperationalError, pw.ProgrammingError):
        return []  # the server has not created the tables yet
    finally:
        close(db)


def jsonl_events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


# A real server, killed without warning ----------------------------------------------------


def test_answered_opens_survive_sigkill(tmp_path, database_url):
    document = base_document(tmp_path / "data", {"acme": {}})
    document["server"]["database_url"] = database_url
    config = tmp_path / "scaisend.yaml"
    config.write_text(yaml.safe_dump(document))
    (key,) = document["server"]["signing_keys"]
    tokens = TokenCodec([SigningKey(key["id"], key["secret"].encode())])
    count = 60
    message_ids = [f"msg-{n:03d}" for n in range(count)]
    serve = ("--config", str(config))

    with ScaisendServer(*serve, cwd=tmp_path, ready_timeout=DEADLINE_SECONDS) as server:
        with httpx.Client(base_url=server.base) as client:
            for message_id in message_ids:
                response = client.get(f"/t/o/{tokens.issue('acme', message_id, 0)}.gif")
                assert response.status_code == 200
        server.kill()  # right after the last answer: no shutdown, no flush
    assert server.process.returncode == -signal.SIGKILL

    with ScaisendServer(*serve, cwd=tmp_path, ready_timeout=DEADLINE_SECONDS):
        opens = wait_for(
            lambda: (
                (found := stored_events(database_url, "open")) and len(found) >= count and found
            ),
            f"{count} opens in the database",
            DEADLINE_SECONDS,
        )
        jsonl = tmp_path / "data" / "events.jsonl"
        lines = wait_for(
            lambda: (
                (found := jsonl_events(jsonl))
                and {e["message_id"] for e in found} >= set(message_ids)
                and found
            ),
            f"{count} opens in {jsonl.name}",
            DEADLINE_SECONDS,
        )
    assert sorted(event.message_id for event in opens) == message_ids  # exactly once each
    assert {event.tenant for event in opens} == {"acme"}
    # At least once: a line may repeat after the kill, always with the event's own id.
    assert {(e["id"], e["message_id"]) for e in lines} == {(e.id, e.message_id) for e in opens}


# Sinks that fail or hang ---------------------------------------------------------------------


class FlakySink:
    """Fails every batch while ``broken`` is set; remembers what it stored once healthy."""

    def __init__(self) -> None:
        self.name = "flaky"
        self.broken = threading.Event()
        self.broken.set()
        self.attempts = 0
        self.stored: list[Event] = []
        self.lock = threading.Lock()

    def write_batch(self, events: Sequence[Event]) -> None:
        with self.lock:
            self.attempts += 1
            if self.broken.is_set():
                raise ConnectionError("webhook endpoint unreachable")
            self.stored.extend(events)

    def ids(self) -> list[str]:
        with self.lock:
            return [event.id for event in self.stored]

    def close(self) -> None:
        return None


class StuckSink:
    """Blocks inside ``write_batch`` until ``gate`` opens, like a sink whose server hangs."""

    def __init__(self) -> None:
        self.name = "stuck"
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.stored: list[Event] = []

    def write_batch(self, events: Sequence[Event]) -> None:
        self.entered.set()
        self.gate.wait()
        self.stored.extend(events)

    def close(self) -> None:
        self.gate.set()


class TroubleSinks:
    __name__ = "trouble-sinks"

    def __init__(self) -> None:
        self.flaky = FlakySink()
        self.stuck = StuckSink()

    @hookimpl
    def register_sinks(self) -> Iterable[SinkType]:
        return [
            SinkType(type="flaky", factory=lambda options, runtime: self.flaky),
            SinkType(type="stuck", factory=lambda options, runtime: self.stuck),
        ]


@pytest.mark.anyio
async def test_failing_and_stuck_sinks_hold_back_neither_responses_nor_other_sinks(tmp_path):
    plugin = TroubleSinks()
    harness = Harness(
        tmp_path,
        plugins=[plugin],
        server={
            "sinks": [
                {"type": "stuck"},
                {"type": "flaky"},
                {"type": "database"},
                {"type": "jsonl"},
            ]
        },
    )
    message_ids = [f"msg-{n}" for n in range(40)]
    jsonl = harness.config.data_dir / "events.jsonl"
    async with harness.serving() as client:
        runtime = harness.runtime
        tokens = runtime.tokens
        first = await client.get(f"/t/o/{tokens.issue('acme', message_ids[0], 0)}.gif")
        assert first.status_code == 200
        # From here on the stuck sink holds a batch and never returns until the gate opens:
        # every later answer proves a response does not wait for it.
        assert plugin.stuck.entered.wait(DEADLINE_SECONDS)
        for message_id in message_ids[1:]:
            response = await client.get(f"/t/o/{tokens.issue('acme', message_id, 0)}.gif")
            assert response.status_code == 200

        wait_for(
            lambda: {e["message_id"] for e in jsonl_events(jsonl)} == set(message_ids),
            "the jsonl sink to take every event",
            DEADLINE_SECONDS,
        )
        stored = wait_for(
            lambda: (rows := list(EventRecord.select())) and len(rows) == len(message_ids) and rows,
            "the database sink to take every event",
            DEADLINE_SECONDS,
        )
        wait_for(
            lambda: plugin.flaky.attempts >= 2, "the failing sink to be retried", DEADLINE_SECONDS
        )
        assert plugin.flaky.stored == []
        assert (
            runtime.bus.status()["flaky"]["error"]
            == "ConnectionError('webhook endpoint unreachable')"
        )

        plugin.flaky.broken.clear()  # the endpoint comes back: the backlog drains
        wait_for(
            lambda: len(plugin.flaky.ids()) >= len(message_ids),
            "the flaky sink's backlog",
            DEADLINE_SECONDS,
        )
        assert plugin.stuck.stored == []
        plugin.stuck.gate.set()
        assert runtime.bus.flush(DEADLINE_SECONDS)
    every_id = sorted(row.id for row in stored)
    assert sorted(set(plugin.flaky.ids())) == every_id
    assert sorted({event.id for event in plugin.stuck.stored}) == every_id
    assert runtime.bus.status()["flaky"] == {"lag_bytes": 0, "failures": 0, "error": None}


# At least once, with stable ids ---------------------------------------------------------------


def test_redelivery_keeps_ids_and_the_database_stores_each_once(tmp_path, database_url):
    harness = Harness(tmp_path, database_url=database_url)
    runtime = harness.open_runtime()
    runtime.start()
    emitted = [
        Event(type="click", tenant="acme", message_id=f"m{n:02d}", data={"url": f"https://x/{n}"})
        for n in range(25)
    ]
    try:
        for event in emitted:
            runtime.emit(event)
        assert runtime.bus.flush()
    finally:
        runtime.close()
    # A crash between a sink's write and its saved cursor: the next process sends it all again.
    (harness.config.data_dir / "journal" / "main.cursors").unlink()
    again = harness.open_runtime()
    again.start()
    try:
        assert again.bus.flush()
        with again.db.connection_context():
            rows = list(EventRecord.select().order_by(EventRecord.message_id))
            # The database sink itself, given a batch twice.
            DatabaseSink("direct", again.db).write_batch(emitted[:5])
            assert EventRecord.select().count() == len(emitted)
    finally:
        again.close()
    assert [(row.id, row.type, row.message_id) for row in rows] == sorted(
        ((e.id, e.type, e.message_id) for e in emitted), key=lambda item: item[1:]
    )
    assert [row.data["url"] for row in rows] == [f"https://x/{n}" for n in range(25)]
    lines = jsonl_events(harness.config.data_dir / "events.jsonl")
    assert [line["id"] for line in lines] == [e.id for e in emitted] * 2
    assert lines[:25] == lines[25:]  # redelivered unchanged


def test_the_database_sink_stores_every_field(tmp_path, database_url):
    harness = Harness(tmp_path, database_url=database_url)
    runtime = harness.open_runtime()
    full = Event(
        type="click",
        tenant="acme",
        message_id="m1",
        recipient="zoë@example.com",
        data={"url": "https://example.com/ü?a=1&b='2'", "nested": {"n": [1, 2.5, None, True]}},
        bot={"verdict": "mailbox_proxy", "score": 0.9},
    )
    bare = Event(type="open", tenant="acme")
    awkward = Event(
        type="click",
        tenant="acme",
        message_id="\\N",  # the bulk format's NULL marker, as a value
        recipient="",
        data={"text": "tab\there\nnew line\r\\ and \\N", "empty": "", "none": None},
    )
    try:
        sink = DatabaseSink("direct", runtime.db)
        sink.write_batch([full, bare, awkward])
        with runtime.db.connection_context():
            rows = {row.id: row for row in EventRecord.select()}
    finally:
        runtime.close()
    for event in (full, bare, awkward):
        row = rows[event.id]
        assert (row.type, row.tenant, row.message_id, row.recipient) == (
            event.type,
            event.tenant,
            event.message_id,
            event.recipient,
        )
        assert row.timestamp == event.timestamp.replace(tzinfo=None)  # naive UTC
        assert row.data == dict(event.data)
        assert row.bot == (dict(event.bot) if event.bot is not None else None)


# Text a database can hold: PostgreSQL refuses NUL in text and in JSON.
stored_text = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00")
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    recipient=st.one_of(st.none(), stored_text),
    data=st.dictionaries(
        stored_text,
        st.recursive(
            st.none() | st.booleans() | st.integers(-(2**53), 2**53) | stored_text,
            lambda inner: (
                st.lists(inner, max_size=3) | st.dictionaries(stored_text, inner, max_size=3)
            ),
            max_leaves=8,
        ),
        max_size=4,
    ),
)
def test_the_database_sink_round_trips_any_text(sink_database, recipient, data):
    event = Event(type="click", tenant="acme", message_id="m", recipient=recipient, data=data)
    DatabaseSink("direct", sink_database).write_batch([event])
    with sink_database.connection_context():
        row = EventRecord.get_by_id(event.id)
    assert (row.recipient, row.data) == (recipient, data)


@pytest.fixture
def sink_database(tmp_path, database_url) -> Iterator[pw.Database]:
    runtime = Harness(tmp_path, database_url=database_url).open_runtime()
    try:
        yield runtime.db
    finally:
        runtime.close()


def test_opens_through_the_bus_are_enriched_in_batches(tmp_path, database_url):
    """Many opens in one batch: addresses, the unique one each, and each first-open time."""
    harness = Harness(tmp_path, database_url=database_url)
    runtime = harness.open_runtime()
    start = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    opens = [
        Event(
            type="open",
            tenant="acme",
            message_id=f"m{n % 50:02d}",
            data={"recipient_number": (n // 50) % 2, "dedupe_key": ""},
            timestamp=start + dt.timedelta(seconds=n),
        )
        for n in range(300)
    ]
    try:
        with runtime.db.connection_context():
            for m in range(50):
                Message.create(id=f"m{m:02d}", tenant="acme")
                for number in (0, 1):
                    MessageRecipient.create(
                        message=f"m{m:02d}", number=number, email=f"r{number}@m{m:02d}.example"
                    )
        for event in opens:
            runtime.emit(event)
        runtime.start()
        assert runtime.bus.flush()
        with runtime.db.connection_context():
            stored = {row.id: row for row in EventRecord.select()}
            first_opens = {
                (f"m{m:02d}", number): at
                for m in range(50)
                for number, at in first_open_times(f"m{m:02d}").items()
            }
    finally:
        runtime.close()
    for n, event in enumerate(opens):
        row = stored[event.id]
        number = (n // 50) % 2
        assert row.recipient == f"r{number}@{event.message_id}.example"
        assert row.data["unique"] is (n < 100)  # the first open of each recipient
    assert first_opens == {
        (f"m{m:02d}", number): (start + dt.timedelta(seconds=m + 50 * number)).replace(tzinfo=None)
        for m in range(50)
        for number in (0, 1)
    }


def test_a_line_torn_by_a_crash_is_skipped_and_the_journal_goes_on(tmp_path):
    harness = Harness(tmp_path)
    runtime = harness.open_runtime()
    runtime.emit(Event(type="open", tenant="acme", message_id="before"))
    runtime.bus.journal.close()
    journal = harness.config.data_dir / "journal" / "main.journal"
    with journal.open("ab") as handle:
        handle.write(b'{"id":"torn","type":"open","ten')  # the process died mid-write
    runtime = harness.open_runtime()
    runtime.start()
    try:
        runtime.emit(Event(type="open", tenant="acme", message_id="after"))
        assert runtime.bus.flush()
        with runtime.db.connection_context():
            stored = sorted(row.message_id for row in EventRecord.select())
    finally:
        runtime.close()
    assert stored == ["after", "before"]


def test_the_log_sink_writes_structured_lines(tmp_path, capfd):
    harness = Harness(tmp_path, server={"sinks": [{"type": "log", "level": "warning"}]})
    runtime = harness.open_runtime()
    runtime.start()
    event = Event(type="bounce", tenant="acme", message_id="m1", data={"reason": "mailbox full"})
    try:
        runtime.emit(event)
        assert runtime.bus.flush()
    finally:
        runtime.close()
    lines = [json.loads(line) for line in capfd.readouterr().err.splitlines() if line]
    (logged,) = [line for line in lines if line.get("event") == "event.bounce"]
    assert (logged["id"], logged["tenant"], logged["message_id"], logged["level"]) == (
        event.id,
        "acme",
        "m1",
        "warning",
    )
    assert logged["data"] == {"reason": "mailbox full"}


def test_a_damaged_journal_line_is_skipped_and_the_lines_around_it_are_read(tmp_path, capfd):
    """A line that is not a JSON event (torn bytes, not UTF-8) costs that line only."""
    from core.events import Journal

    first = Event(type="open", tenant="acme", message_id="m1", data={"note": "caf\u00e9 \u2028"})
    second = Event(type="click", tenant="acme", message_id="m1")
    journal = Journal(tmp_path / "journal")
    journal.append(first)
    journal.close()
    with (tmp_path / "journal" / "main.journal").open("ab") as raw:
        raw.write(b'{"id": "x", "type": \xff\xfe not json\n')
        raw.write(json.dumps(second.to_dict()).encode() + b"\n")

    journal = Journal(tmp_path / "journal")
    events, offset = journal.read(0)

    assert [(e.id, e.type, e.data) for e in events] == [
        (first.id, "open", first.data),
        (second.id, "click", {}),
    ]
    assert offset == journal.end
    assert '"journal.corrupt_line"' in capfd.readouterr().err
    journal.close()


def test_events_read_back_or_enriched_equal_ones_built_the_usual_way():
    event = Event(type="open", tenant="acme", message_id="m1", data={"recipient_number": 2})
    assert Event.from_dict(json.loads(json.dumps(event.to_dict()))) == event
    enriched = Event.from_fields(vars(event) | {"recipient": "r@example.com"})
    assert enriched == dataclasses.replace(event, recipient="r@example.com")
    with pytest.raises(dataclasses.FrozenInstanceError):
        enriched.recipient = "someone@example.com"  # type: ignore[misc]
