"""Sinks fed by a process that follows the server's journal: nothing lost or doubled when the
journal is emptied under it, its progress and failures visible to the server, drained on a
clean stop, started again when it dies."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import yaml

from core.config import SigningKey
from core.events import Event, EventBus, Journal, JournalReader
from core.testing import base_document
from core.tokens import TokenCodec
from tests.serving import ScaisendServer, wait_for
from tests.test_events import jsonl_events, stored_events

DEADLINE_SECONDS = 60.0


class RecordingSink:
    """Keeps what it is given; fails every batch while ``broken`` is set."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.broken = threading.Event()
        self.lock = threading.Lock()
        self.ids: list[str] = []

    def write_batch(self, events: Sequence[Event]) -> None:
        if self.broken.is_set():
            raise ConnectionError(f"{self.name} unreachable")
        with self.lock:
            self.ids.extend(event.id for event in events)

    def taken(self) -> list[str]:
        with self.lock:
            return list(self.ids)

    def close(self) -> None:
        return None


def emit_clicks(bus: EventBus, count: int, start: int) -> list[str]:
    events = [
        Event(type="click", tenant="acme", message_id=f"m{n:04d}", data={"url": f"https://x/{n}"})
        for n in range(start, start + count)
    ]
    for event in events:
        bus.emit(event)
    return [event.id for event in events]


def test_a_follower_takes_every_event_once_across_emptied_journals(tmp_path):
    directory = tmp_path / "journal"
    writer = EventBus(
        Journal(directory), [RecordingSink("a"), RecordingSink("b")], compact_bytes=2000
    )
    writer.deliver_elsewhere()
    a, b = RecordingSink("a"), RecordingSink("b")
    b.broken.set()
    follower = EventBus(JournalReader(directory), [a, b], linger=0.01, poll_interval=0.01)
    writer.start()
    follower.start()
    try:
        first = emit_clicks(writer, 30, 0)
        wait_for(lambda: a.taken() == first, "sink a to take the first events", DEADLINE_SECONDS)
        status = wait_for(
            lambda: (found := writer.status())["b"]["failures"] and found,
            "the writer to see sink b failing",
            DEADLINE_SECONDS,
        )
        assert status["b"]["error"] == "ConnectionError('b unreachable')"
        assert status["b"]["lag_bytes"] == writer.journal.end > 2000
        assert status["a"] == {"lag_bytes": 0, "failures": 0, "error": None}
        assert writer.journal.generation == 0  # b has not taken it: the journal is kept
        assert not writer.flush(timeout=0.2)

        b.broken.clear()
        wait_for(lambda: writer.journal.generation == 1, "the journal to be emptied", 30)
        second = emit_clicks(writer, 30, 30)
        assert writer.flush(DEADLINE_SECONDS)
        wait_for(lambda: writer.journal.generation == 2, "the journal to be emptied again", 30)
        third = emit_clicks(writer, 5, 60)
        assert writer.flush(DEADLINE_SECONDS)
        assert a.taken() == b.taken() == first + second + third
        assert writer.status() == {
            name: {"lag_bytes": 0, "failures": 0, "error": None} for name in ("a", "b")
        }
    finally:
        follower.stop(timeout=5)
        writer.stop(timeout=5)


@contextmanager
def running(bus: EventBus) -> Iterator[EventBus]:
    bus.start()
    try:
        yield bus
    finally:
        bus.stop(timeout=5)


def test_a_journal_emptied_in_process_is_neither_lost_nor_delivered_again_after_a_restart(
    tmp_path,
):
    directory = tmp_path / "journal"
    sink = RecordingSink("a")
    with running(EventBus(Journal(directory), [sink], linger=0.01, compact_bytes=2000)) as bus:
        first = emit_clicks(bus, 30, 0)
        assert bus.flush(DEADLINE_SECONDS)
        wait_for(lambda: bus.journal.generation == 1, "the journal to be emptied", 30)
        second = emit_clicks(bus, 3, 30)
        assert bus.flush(DEADLINE_SECONDS)
    assert sink.taken() == first + second

    again = RecordingSink("a")
    with running(EventBus(Journal(directory), [again], linger=0.01, compact_bytes=2000)) as bus:
        third = emit_clicks(bus, 2, 33)
        assert bus.flush(DEADLINE_SECONDS)
    assert bus.journal.generation == 1
    assert again.taken() == third


def deleted_journals_held_open(directory: Path) -> int:
    """How many emptied journal files this process still holds open (their blocks unfreed)."""
    held = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            held += target.startswith(str(directory)) and target.endswith("(deleted)")
    return held


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads /proc/self/fd (Linux)")
def test_an_emptied_journal_is_replaced_and_its_space_given_back_by_the_next_emptying(tmp_path):
    directory = tmp_path / "journal"
    directory.mkdir()
    (directory / "main.journal.next").write_bytes(b"left by a crash while emptying\n")
    sink = RecordingSink("a")
    with running(EventBus(Journal(directory), [sink], linger=0.01, compact_bytes=2000)) as bus:
        assert not (directory / "main.journal.next").exists()
        taken: list[str] = []
        for generation in (1, 2, 3):
            before = os.stat(directory / "main.journal").st_ino
            taken += emit_clicks(bus, 30, 30 * generation)
            assert bus.flush(DEADLINE_SECONDS)
            wait_for(
                lambda generation=generation: bus.journal.generation == generation,
                f"generation {generation}",
                30,
            )
            # A new file took the journal's name (appends wait for a rename, not for the old
            # file's blocks to be freed), and only the last emptied file is still held open.
            assert os.stat(directory / "main.journal").st_ino != before
            wait_for(
                lambda: deleted_journals_held_open(directory) <= 1,
                "all but the last emptied journal to be closed",
                30,
            )
        last = emit_clicks(bus, 2, 200)
        assert bus.flush(DEADLINE_SECONDS)
    assert sink.taken() == taken + last
    assert deleted_journals_held_open(directory) == 0


# A real server and its delivery process --------------------------------------------------------


@pytest.fixture
def served(tmp_path: Path) -> tuple[tuple[str, ...], TokenCodec, str]:
    document = base_document(tmp_path / "data", {"acme": {}})
    database_url = f"sqlite:///{tmp_path / 'data' / 'scaisend.db'}"
    document["server"]["database_url"] = database_url
    config = tmp_path / "scaisend.yaml"
    config.write_text(yaml.safe_dump(document))
    (key,) = document["server"]["signing_keys"]
    tokens = TokenCodec([SigningKey(key["id"], key["secret"].encode())])
    return ("--config", str(config)), tokens, database_url


def open_pixels(base: str, tokens: TokenCodec, message_ids: list[str]) -> None:
    with httpx.Client(base_url=base) as client:
        for message_id in message_ids:
            response = client.get(f"/t/o/{tokens.issue('acme', message_id, 0)}.gif")
            assert response.status_code == 200


def delivery_processes(server_pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        parent = int(stat[stat.rindex(")") + 2 :].split()[1])
        if parent == server_pid and b"core.delivery" in command:
            found.append(int(entry.name))
    return found


def test_a_clean_stop_delivers_every_answered_event_before_the_server_exits(tmp_path, served):
    serve, tokens, database_url = served
    message_ids = [f"msg-{n:03d}" for n in range(40)]
    with ScaisendServer(*serve, cwd=tmp_path, ready_timeout=DEADLINE_SECONDS) as server:
        open_pixels(server.base, tokens, message_ids)
        server.stop()  # right after the last answer
    assert server.process.returncode == 0
    assert sorted(event.message_id for event in stored_events(database_url, "open")) == message_ids
    lines = jsonl_events(tmp_path / "data" / "events.jsonl")
    assert sorted(line["message_id"] for line in lines) == message_ids


def test_a_delivery_process_that_dies_is_started_again_and_catches_up(tmp_path, served):
    serve, tokens, database_url = served
    before = [f"before-{n:02d}" for n in range(10)]
    after = [f"after-{n:02d}" for n in range(10)]
    with ScaisendServer(*serve, cwd=tmp_path, ready_timeout=DEADLINE_SECONDS) as server:
        open_pixels(server.base, tokens, before)
        (first,) = wait_for(
            lambda: delivery_processes(server.process.pid), "the delivery process", 30
        )
        wait_for(
            lambda: len(stored_events(database_url, "open")) == len(before),
            "the first opens in the database",
            DEADLINE_SECONDS,
        )
        os.kill(first, signal.SIGKILL)
        open_pixels(server.base, tokens, after)  # answered while no process delivers
        wait_for(
            lambda: (found := delivery_processes(server.process.pid)) and found != [first],
            "a new delivery process",
            30,
        )
        stored = wait_for(
            lambda: (
                (found := stored_events(database_url, "open"))
                and len(found) == len(before) + len(after)
                and found
            ),
            "the later opens in the database",
            DEADLINE_SECONDS,
        )
    assert sorted(event.message_id for event in stored) == sorted(before + after)


class FlakySink(RecordingSink):
    """Fails the calls numbered in ``failing``; on its first call, notes whether the next
    batch was already being enriched while this one was being stored."""

    def __init__(self, name: str, failing: set[int], enriching: threading.Event) -> None:
        super().__init__(name)
        self.calls = 0
        self.failing = failing
        self.enriching = enriching
        self.overlapped: bool | None = None

    def write_batch(self, events: Sequence[Event]) -> None:
        self.calls += 1
        if self.overlapped is None:
            self.overlapped = self.enriching.wait(DEADLINE_SECONDS)
        if self.calls in self.failing:
            raise ConnectionError("flaky")
        super().write_batch(events)


@pytest.mark.parametrize("read_ahead", [False, True], ids=["in-turn", "read-ahead"])
def test_batches_are_stored_once_and_in_order_through_failures(tmp_path, read_ahead):
    """Reading and enriching the next batch while one is stored (as on PostgreSQL) changes
    nothing a sink receives, even when storing fails and batches are retried."""
    enriched: list[int] = []
    second = threading.Event()

    def enrich(events: Sequence[Event]) -> Sequence[Event]:
        enriched.append(len(events))
        if len(enriched) >= 2:
            second.set()
        return list(events)

    if not read_ahead:
        second.set()  # nothing to wait for: batches are enriched in turn
    sink = FlakySink("db", failing={2, 5, 6}, enriching=second)
    bus = EventBus(
        Journal(tmp_path / "journal"),
        [sink],
        batch_bytes=600,
        linger=0.01,
        max_backoff=0.01,
        enrich=enrich,
        read_ahead=read_ahead,
    )
    emitted = emit_clicks(bus, 60, 0)
    with running(bus):
        assert bus.flush(DEADLINE_SECONDS)
        assert sink.taken() == emitted
        assert sink.overlapped is True
