"""Events, the append-only journal that makes them durable, and the bus that feeds the sinks.

A tracking route calls :meth:`EventBus.emit` before it answers. ``emit`` appends one JSON line
to this node's journal with a single ``write(2)``: once it returns, the event survives the death
of the process (the bytes are in the kernel), so an answered request never loses its event.
The journal is fsynced in groups by a background thread, and every sink has its own thread and
its own cursor into the journal: a slow or failing sink falls behind and catches up later
without delaying a response or any other sink. After a restart each sink resumes from its
saved cursor, so delivery is at least once; events carry a unique id for idempotency.

The sinks' threads run in the process that writes the journal, or in another process that
follows it (:class:`JournalReader`; ``scaisend serve`` does this, see core.delivery), so that
their work never competes with the server's requests for the interpreter. The writer alone
empties a journal every sink has taken; the journal's *generation* (a number beside it, saved
with the cursors) tells a follower it was emptied.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from core import jsontext
from core.sinks import Sink

log = structlog.get_logger("scaisend.events")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_event_id() -> str:
    """128 random bits as 32 hex digits, the width of a UUID's hex form (and four times as
    quick to make as one)."""
    return os.urandom(16).hex()


@dataclass(frozen=True)
class Event:
    """Something that happened to a message: an open, a click, a bounce, an unsubscribe...

    ``id`` is unique and stable across redelivery. ``bot`` holds a classifier's verdict on the
    request that caused the event (``None`` when none ran).
    """

    type: str
    tenant: str
    message_id: str | None = None
    recipient: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)
    bot: Mapping[str, Any] | None = None
    id: str = field(default_factory=new_event_id)
    timestamp: dt.datetime = field(default_factory=_now)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "tenant": self.tenant,
            "message_id": self.message_id,
            "recipient": self.recipient,
            "timestamp": self.timestamp.isoformat(),
            "data": dict(self.data),
            "bot": dict(self.bot) if self.bot is not None else None,
        }

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> Event:
        """The event with exactly ``fields``, which name every field (``vars()`` of another
        event, with changes). Built without the dataclass ``__init__``, which sets each field
        of a frozen instance through ``object.__setattr__`` and costs four times as much:
        journal reads and enrichment build one per event. The result is as frozen."""
        event = object.__new__(cls)
        event.__dict__.update(fields)
        return event

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Event:
        return cls.from_fields(
            {
                "type": raw["type"],
                "tenant": raw["tenant"],
                "message_id": raw.get("message_id"),
                "recipient": raw.get("recipient"),
                "data": raw.get("data") or {},
                "bot": raw.get("bot"),
                "id": raw["id"],
                "timestamp": dt.datetime.fromisoformat(raw["timestamp"]),
            }
        )


class JournalLocked(RuntimeError):
    """Another live process owns this journal."""


def _read_generation(path: Path) -> int:
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return 0


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _read_lines(
    fd: int, path: Path, offset: int, end: int, max_bytes: int
) -> tuple[list[Event], int]:
    """Complete events of the file ``fd`` from ``offset``, and the offset after the last one."""
    if offset >= end:
        return [], offset
    chunk = os.pread(fd, min(max_bytes, end - offset), offset)
    cut = chunk.rfind(b"\n")
    if cut == -1:
        # One line longer than max_bytes: read it whole.
        chunk = os.pread(fd, end - offset, offset)
        cut = chunk.rfind(b"\n")
        if cut == -1:
            return [], offset
    events: list[Event] = []
    for line in chunk[: cut + 1].split(b"\n"):
        if not line:
            continue
        try:
            events.append(Event.from_dict(jsontext.loads(line)))
        except (ValueError, KeyError, TypeError) as exc:
            log.error("journal.corrupt_line", path=str(path), error=repr(exc))
    return events, offset + cut + 1


class Journal:
    """An append-only file of JSON lines, owned by one process at a time."""

    def __init__(self, directory: Path, node_id: str = "main") -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{node_id}.journal"
        self._lock_fd = os.open(directory / f"{node_id}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise JournalLocked(
                f"{self.path} is in use by another process: give each process sharing the "
                "data directory its own server.node_id"
            ) from None
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        self._next_path = directory / f"{node_id}.journal.next"
        with contextlib.suppress(FileNotFoundError):
            self._next_path.unlink()  # left by a crash while the journal was being emptied
        self._directory = directory
        self._generation_path = directory / f"{node_id}.generation"
        self.generation = _read_generation(self._generation_path)
        self._write_lock = threading.Lock()
        self._retired: int | None = None
        self._renamed = False
        self._end = os.fstat(self._fd).st_size
        self._synced = self._end
        if self._end and os.pread(self._fd, 1, self._end - 1) != b"\n":
            # A line cut short by a crash was never acknowledged; close it off so the next
            # append starts a line of its own. The reader skips the fragment.
            self._end += os.write(self._fd, b"\n")

    @property
    def end(self) -> int:
        return self._end

    def append(self, event: Event) -> int:
        line = jsontext.dumps(event.to_dict()) + b"\n"
        with self._write_lock:
            written = os.write(self._fd, line)
            if written != len(line):  # a short write to a regular file means the disk is full
                raise OSError(f"journal write truncated ({written}/{len(line)} bytes)")
            self._end += written
            return self._end

    def read(self, offset: int, max_bytes: int = 1 << 20) -> tuple[list[Event], int]:
        """Complete events from ``offset``; returns them and the offset after the last one."""
        return _read_lines(self._fd, self.path, offset, self._end, max_bytes)

    def sync(self) -> None:
        with self._write_lock:
            fd, end, generation, synced = self._fd, self._end, self.generation, self._synced
            renamed, self._renamed = self._renamed, False
        if end != synced:
            os.fsync(fd)
            with self._write_lock:
                if self.generation == generation:  # not emptied meanwhile
                    self._synced = max(self._synced, end)
        if renamed:  # the emptied journal's new file is durable once its name is
            directory = os.open(self._directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)

    def empty_if(self, caught_up: int, then: Callable[[], None]) -> bool:
        """Start an empty journal if ``caught_up`` (every sink's cursor) is its end.

        A new empty file replaces the journal under its name; the journal's generation goes up
        by one and ``then`` (resetting the cursors) runs before any further append can happen.
        Appends wait only for that rename: truncating the old file in place held them for as
        long as freeing its blocks took (16 ms for 64 MiB on ext4). The old file is closed at
        the next emptying, so that a read still under way on it never meets a reused
        descriptor, and its blocks are freed when its last descriptor closes.
        """
        with self._write_lock:
            if caught_up != self._end or self._end == 0:
                return False
            fresh = os.open(
                self._next_path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC, 0o600
            )
            os.replace(self._next_path, self.path)
            retired, self._fd = self._fd, fresh
            self._end = self._synced = 0
            self._renamed = True
            self.generation += 1
            _write_atomically(self._generation_path, str(self.generation))
            then()
        previous, self._retired = self._retired, retired
        if previous is not None:
            os.close(previous)
        return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sync()
        os.close(self._fd)
        if self._retired is not None:
            os.close(self._retired)
        os.close(self._lock_fd)


class JournalReader:
    """The journal of ``node_id`` as another process writes it: read, never written.

    Its end is the file's size: the writer appends whole lines with one ``write(2)`` each,
    and a line still being written is not read until its newline is there.
    """

    def __init__(self, directory: Path, node_id: str = "main") -> None:
        self.path = directory / f"{node_id}.journal"
        self._generation_path = directory / f"{node_id}.generation"
        self._reopen_lock = threading.Lock()
        # The generation is read before the file is opened, so the file is never older than
        # the generation it is taken for: a read of a newer one is caught by the next check.
        self._opened = _read_generation(self._generation_path)
        self._fd = os.open(self.path, os.O_RDONLY | os.O_CREAT, 0o600)
        self._retired: int | None = None

    @property
    def end(self) -> int:
        return os.fstat(self._fd).st_size

    @property
    def generation(self) -> int:
        """The writer's generation; the journal is opened again under its name when it has
        changed, since the writer empties it by putting a new file in its place."""
        generation = _read_generation(self._generation_path)
        if generation != self._opened:
            with self._reopen_lock:
                if generation != self._opened:
                    fresh = os.open(self.path, os.O_RDONLY | os.O_CREAT, 0o600)
                    previous, self._retired, self._fd = self._retired, self._fd, fresh
                    self._opened = generation
                    if previous is not None:  # a generation ago: no read is still on it
                        os.close(previous)
        return generation

    def read(self, offset: int, max_bytes: int = 1 << 20) -> tuple[list[Event], int]:
        return _read_lines(self._fd, self.path, offset, self.end, max_bytes)

    def append(self, event: Event) -> int:
        raise OSError(f"{self.path} is written by another process")

    def sync(self) -> None:
        return None

    def empty_if(self, caught_up: int, then: Callable[[], None]) -> bool:
        return False  # only the writer empties its journal

    def close(self) -> None:
        os.close(self._fd)
        if self._retired is not None:
            os.close(self._retired)


class Cursors:
    """Each sink's offset into the journal, saved atomically beside it with the journal's
    generation they belong to."""

    def __init__(self, path: Path, journal_end: int, journal_generation: int = 0) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.generation, self.offsets = self.saved(path)
        if self.generation != journal_generation:  # the journal was emptied since
            self.generation = journal_generation
            self.offsets = dict.fromkeys(self.offsets, 0)
        for name, offset in list(self.offsets.items()):
            if offset > journal_end:  # the journal was emptied after these were written
                self.offsets[name] = 0

    @staticmethod
    def saved(path: Path) -> tuple[int, dict[str, int]]:
        """The generation and offsets last saved at ``path`` (``0, {}`` when none are)."""
        try:
            saved = json.loads(path.read_text())
            if isinstance(saved, dict) and "offsets" in saved:
                return int(saved["generation"]), {
                    str(k): int(v) for k, v in saved["offsets"].items()
                }
            return 0, {str(k): int(v) for k, v in saved.items()}  # written before generations
        except FileNotFoundError:
            return 0, {}
        except (OSError, ValueError, TypeError, AttributeError, KeyError) as exc:
            log.error("journal.cursors_unreadable", path=str(path), error=repr(exc))
            return 0, {}

    def get(self, name: str) -> int:
        with self._lock:
            return self.offsets.get(name, 0)

    def get_with_generation(self, name: str) -> tuple[int, int]:
        with self._lock:
            return self.offsets.get(name, 0), self.generation

    def advance(self, name: str, offset: int, generation: int) -> None:
        """Move a cursor, unless the journal was emptied since ``generation`` was read."""
        with self._lock:
            if generation == self.generation:
                self.offsets[name] = offset
                self._save()

    def reset(self, generation: int) -> None:
        """Every cursor back to the start of the journal's ``generation``."""
        with self._lock:
            if generation == self.generation:
                return  # another sink's thread saw the change first
            self.generation = generation
            self.offsets = dict.fromkeys(self.offsets, 0)
            self._save()

    def _save(self) -> None:
        _write_atomically(
            self.path, json.dumps({"generation": self.generation, "offsets": self.offsets})
        )


@dataclass
class SinkState:
    sink: Sink
    thread: threading.Thread | None = None
    failures: int = 0
    last_error: str | None = None


class EventBus:
    """Journals events and delivers them to every sink from its own thread."""

    def __init__(
        self,
        journal: Journal | JournalReader,
        sinks: Sequence[Sink],
        *,
        batch_bytes: int = 1 << 20,
        sync_interval: float = 0.02,
        linger: float = 0.05,
        max_backoff: float = 30.0,
        compact_bytes: int = 64 << 20,
        enrich: Callable[[Sequence[Event]], Sequence[Event]] | None = None,
        read_ahead: bool = False,
        poll_interval: float = 0.5,
    ) -> None:
        """``enrich`` turns each batch read from the journal into what sinks receive; it is
        called from every sink's thread and must be idempotent (see core.enrichment).

        With ``read_ahead``, while a sink stores one batch the next full one is read and
        enriched on another thread (worth it when enrichment and storing wait on a database
        that serves both at once).

        A sink that finds less than ``batch_bytes`` waiting lets events gather for ``linger``
        seconds first: under load, one transaction then carries the many events that arrived
        meanwhile instead of one each, which costs the event loop far less interpreter time.
        A sink that has taken everything looks again after ``poll_interval`` seconds, or as
        soon as this process emits.
        """
        names = [sink.name for sink in sinks]
        if len(set(names)) != len(names):
            raise ValueError(f"sink names must be unique, got {names}")
        self.journal = journal
        self.cursors = Cursors(
            journal.path.with_suffix(".cursors"), journal.end, journal.generation
        )
        self._status_path = journal.path.with_suffix(".status")
        self._status_lock = threading.Lock()
        self._states = {sink.name: SinkState(sink) for sink in sinks}
        for name in list(self.cursors.offsets):
            if name not in self._states:
                del self.cursors.offsets[name]  # a sink that was removed from the config
        self._batch_bytes = batch_bytes
        self._sync_interval = sync_interval
        self._linger = linger
        self._max_backoff = max_backoff
        self._compact_bytes = compact_bytes
        self._enrich = enrich
        self._read_ahead = read_ahead and enrich is not None
        self._poll_interval = poll_interval
        self._elsewhere = False
        self._changed = threading.Condition()
        self._stopping = threading.Event()
        self._syncer: threading.Thread | None = None
        self._started = False

    @property
    def sinks(self) -> list[Sink]:
        return [state.sink for state in self._states.values()]

    def emit(self, event: Event) -> None:
        """Make ``event`` durable against a process crash, then wake the sinks."""
        self.journal.append(event)
        with self._changed:
            self._changed.notify_all()

    def deliver_elsewhere(self) -> None:
        """Leave the sinks to another process following this journal (core.delivery).

        Call before :meth:`start`, which then starts no sink thread: this process still
        syncs the journal, empties it once that process has taken everything, and reports
        that process's progress in :meth:`lag`, :meth:`status` and :meth:`flush`.
        """
        self._elsewhere = True

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        for name, state in self._states.items():
            if self._elsewhere:
                break
            state.thread = threading.Thread(
                target=self._deliver, args=(name,), name=f"sink:{name}", daemon=True
            )
            state.thread.start()
        self._syncer = threading.Thread(target=self._sync_loop, name="journal-sync", daemon=True)
        self._syncer.start()

    def _taken(self) -> dict[str, int]:
        """Where each sink is in the journal."""
        if not self._elsewhere:
            return {name: self.cursors.get(name) for name in self._states}
        generation, offsets = Cursors.saved(self.cursors.path)
        if generation != self.journal.generation:
            return dict.fromkeys(self._states, 0)  # the follower has yet to see it emptied
        return {name: offsets.get(name, 0) for name in self._states}

    def lag(self) -> dict[str, int]:
        """Bytes of journal each sink has yet to take."""
        end = self.journal.end
        return {name: max(0, end - taken) for name, taken in self._taken().items()}

    def status(self) -> dict[str, dict[str, Any]]:
        lag = self.lag()
        saved: dict[str, Any] = {}
        if self._elsewhere:
            with contextlib.suppress(OSError, ValueError):
                found = json.loads(self._status_path.read_text())
                saved = found if isinstance(found, dict) else {}
        return {
            name: {
                "lag_bytes": lag[name],
                **(
                    {"failures": 0, "error": None, **saved.get(name, {})}
                    if self._elsewhere
                    else {"failures": state.failures, "error": state.last_error}
                ),
            }
            for name, state in self._states.items()
        }

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every sink has taken everything emitted so far."""
        target, generation = self.journal.end, self.journal.generation
        deadline = time.monotonic() + timeout
        with self._changed:
            # An emptied journal was taken whole by every sink.
            while generation == self.journal.generation and any(
                taken < target for taken in self._taken().values()
            ):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(min(remaining, 0.05))
        return True

    def stop(self, timeout: float = 10.0) -> None:
        """Let sinks drain for up to ``timeout`` seconds, then stop and close everything."""
        if self._started:
            if not self._elsewhere:  # the follower drains on its own
                self.flush(timeout)
            self._stopping.set()
            with self._changed:
                self._changed.notify_all()
            for state in self._states.values():
                if state.thread is not None:
                    state.thread.join(timeout=1.0)
            if self._syncer is not None:
                self._syncer.join(timeout=1.0)
        for state in self._states.values():
            try:
                state.sink.close()
            except Exception as exc:  # noqa: BLE001 - a sink failing to close must not stop the rest
                log.error("sink.close_failed", sink=state.sink.name, error=repr(exc))
        self.journal.close()

    def _read(self, offset: int, generation: int) -> tuple[Sequence[Event], int] | None:
        """The batch at ``offset``, enriched, and where the next one starts; ``None`` when the
        journal was emptied meanwhile (what was read may be the new journal's)."""
        events, new_offset = self.journal.read(offset, self._batch_bytes)
        if self.journal.generation != generation:
            return None
        return (self._enrich(events) if self._enrich and events else events), new_offset

    def _deliver(self, name: str) -> None:
        state = self._states[name]
        # The cursor moves only once a batch is stored; a batch read ahead for a cursor that
        # did not get there (a failure, an emptied journal) is dropped and read again, which
        # enrichment allows (it is idempotent).
        ahead = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sink:{name}:ahead")
        prefetched: tuple[int, int, Future[tuple[Sequence[Event], int] | None]] | None = None
        try:
            while not self._stopping.is_set():
                if (journal_generation := self.journal.generation) != self.cursors.generation:
                    self.cursors.reset(journal_generation)  # the writer emptied the journal
                offset, generation = self.cursors.get_with_generation(name)
                future = None
                if prefetched is not None and prefetched[:2] == (offset, generation):
                    future = prefetched[2]
                prefetched = None
                if future is None:
                    if offset >= self.journal.end:
                        with self._changed:
                            if offset >= self.journal.end and not self._stopping.is_set():
                                self._changed.wait(self._poll_interval)
                        continue
                    if self.journal.end - offset < self._batch_bytes and self._stopping.wait(
                        self._linger
                    ):
                        continue
                try:
                    batch = (
                        future.result() if future is not None else self._read(offset, generation)
                    )
                    if batch is None:
                        continue
                    events, new_offset = batch
                    if self._read_ahead and self.journal.end - new_offset >= self._batch_bytes:
                        prefetched = (
                            new_offset,
                            generation,
                            ahead.submit(self._read, new_offset, generation),
                        )
                    if events:
                        state.sink.write_batch(events)
                except Exception as exc:  # noqa: BLE001 - the batch is retried, never dropped
                    prefetched = None
                    state.failures += 1
                    state.last_error = repr(exc)
                    delay = min(self._max_backoff, 0.05 * 2 ** min(state.failures, 12))
                    log.error(
                        "sink.failed",
                        sink=name,
                        attempt=state.failures,
                        retry_in_s=delay,
                        error=repr(exc),
                    )
                    self._save_status()
                    self._stopping.wait(delay)
                    continue
                if events and state.failures:
                    log.info("sink.recovered", sink=name, after_failures=state.failures)
                    state.failures = 0
                    state.last_error = None
                    self._save_status()
                self.cursors.advance(name, new_offset, generation)
                with self._changed:
                    self._changed.notify_all()
                self._maybe_compact()
        finally:
            ahead.shutdown(wait=True, cancel_futures=True)

    def _save_status(self) -> None:
        """What failed last, for a writer whose sinks this process feeds."""
        with self._status_lock:
            status = {
                name: {"failures": state.failures, "error": state.last_error}
                for name, state in self._states.items()
            }
            try:
                _write_atomically(self._status_path, json.dumps(status))
            except OSError as exc:
                log.error("sink.status_not_saved", error=repr(exc))

    def _reset_cursors(self) -> None:
        self.cursors.reset(self.journal.generation)

    def _maybe_compact(self) -> None:
        if self.journal.end < self._compact_bytes:
            return
        offsets = set(self._taken().values())
        # A follower resets its own cursors when it sees the generation change.
        then = (lambda: None) if self._elsewhere else self._reset_cursors
        if len(offsets) == 1 and self.journal.empty_if(offsets.pop(), then):
            log.info("journal.compacted", path=str(self.journal.path))

    def _sync_loop(self) -> None:
        while not self._stopping.wait(self._sync_interval):
            try:
                self.journal.sync()
                if self._elsewhere:
                    self._maybe_compact()
            except OSError as exc:
                log.error("journal.sync_failed", error=repr(exc))
