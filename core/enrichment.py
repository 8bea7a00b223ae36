"""Facts only the database knows, added to events after they are journaled, before sinks.

Tracking routes answer without touching the database, so the event they journal says which
recipient *number* of which message it concerns, nothing more. Before any sink sees it, this
step adds, with a few statements per batch (on PostgreSQL a large batch is split in two, for
recipients that do not overlap, done on two connections at once):

- ``recipient``: the address that number stands for;
- ``data.unique``: for events that carry ``data.dedupe_key`` (opens: ``""``; clicks: the URL),
  whether this is the first such event for that recipient, decided by a primary key that every
  process sharing the database respects;
- the recipient's first-open time, which is the time of its first unique ``open``: the first
  interaction that decides it is what :func:`core.storage.first_open_times` reads, so nothing
  else is written for it.

It is idempotent: an event processed again (after a crash, or for a second sink) gets the same
answer, because the first interaction remembers which event it was.
"""

from __future__ import annotations

import operator
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from typing import Any

import peewee as pw

from core.events import Event
from core.storage import (
    INTERACTION_FIELDS,
    INTERACTION_KEY,
    FirstInteraction,
    MessageRecipient,
    interaction_key_hash,
)
from core.storage.bulk import insert_new, select_matching

DEDUPE_KEY = "dedupe_key"

_Answer = tuple[str | None, bool | None]
"""What enrichment adds to one event: its recipient's address and whether it is the unique one
(``None``: nothing to add). A tuple of plain values, which the garbage collector stops tracking:
a cache of whole events would have every full collection walk all of them while every thread,
the event loop's included, waits."""

_NOTHING: _Answer = (None, None)

_TIMESTAMP = operator.attrgetter("timestamp")

_PARALLEL_FROM = 1_000
"""Events from which a batch on PostgreSQL is split in two transactions run at once."""


class EventEnricher:
    """Called by every sink's thread on each batch; the work is done once per event."""

    def __init__(self, db: pw.Database, cache_size: int = 50_000) -> None:
        self.db = db
        self._cache: OrderedDict[str, _Answer] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._workers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="enrich")

    @property
    def overlaps_storing(self) -> bool:
        """Whether enriching one batch while a sink stores another gains anything: on
        PostgreSQL the two run on connections of their own, while SQLite has one writer and
        they would only queue for it."""
        return isinstance(self.db, pw.PostgresqlDatabase)

    def __call__(self, events: Sequence[Event]) -> list[Event]:
        with self._lock:
            missing = [event for event in events if event.id not in self._cache]
            answers = self._answers(missing) if missing else {}
            self._cache.update(answers)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
            return [
                self._apply(
                    event, answers[event.id] if event.id in answers else self._cache[event.id]
                )
                for event in events
            ]

    @staticmethod
    def _apply(event: Event, answer: _Answer) -> Event:
        recipient, unique = answer
        changes: dict[str, Any] = {}
        if recipient is not None and event.recipient is None:
            changes["recipient"] = recipient
        if unique is not None:
            changes["data"] = {**event.data, "unique": unique}
        # The event's fields with the changes, as dataclasses.replace would make it, at a
        # fifth of its cost (it is paid for every event of every batch).
        return Event.from_fields(vars(event) | changes) if changes else event

    def _answers(self, events: list[Event]) -> dict[str, _Answer]:
        relevant = [e for e in events if e.message_id is not None and "recipient_number" in e.data]
        answers = dict.fromkeys((event.id for event in events), _NOTHING)
        if len(relevant) < _PARALLEL_FROM or not isinstance(self.db, pw.PostgresqlDatabase):
            answers.update(self._answers_now(relevant))
            return answers
        # The database server's work dominates: halves that share no recipient (so no row and
        # no first interaction) go on two connections at once.
        halves: tuple[list[Event], list[Event]] = ([], [])
        for event in relevant:
            halves[hash((event.message_id, event.data["recipient_number"])) & 1].append(event)
        for half in self._workers.map(self._answers_on_a_pooled_connection, halves):
            answers.update(half)
        return answers

    def _answers_on_a_pooled_connection(self, events: list[Event]) -> dict[str, _Answer]:
        try:
            return self._answers_now(events)
        finally:
            self.db.close()  # back to the pool: an idle worker holds no connection

    def _answers_now(self, relevant: list[Event]) -> dict[str, _Answer]:
        if not relevant:
            return {}
        # Each event's interaction key is worked out once: hashing it is the per-event cost.
        interactions = {e.id: self._interaction(e) for e in relevant if DEDUPE_KEY in e.data}
        self.db.connect(reuse_if_open=True)
        # Every statement below runs on self.db, whichever database the models' proxy was last
        # pointed at. Each needs no other's transaction: addresses never change, and a claim is
        # one statement. SQLite's many single-row inserts share one, or each would be synced
        # to disk; on PostgreSQL each statement is its own, saving BEGIN's and COMMIT's round
        # trips.
        with self.db.atomic() if isinstance(self.db, pw.SqliteDatabase) else nullcontext():
            emails = self._emails(relevant)
            firsts = self._first_interactions(relevant, interactions)
        answers: dict[str, _Answer] = {}
        for event in relevant:
            email = (
                emails.get((event.message_id, int(event.data["recipient_number"])))
                if event.recipient is None
                else None
            )
            interaction = interactions.get(event.id)
            unique = None if interaction is None else firsts.get(interaction) == event.id
            answers[event.id] = (email, unique)
        return answers

    @staticmethod
    def _interaction(event: Event) -> tuple[str, int, str, str]:
        assert event.message_id is not None
        return (
            event.message_id,
            int(event.data["recipient_number"]),
            event.type,
            interaction_key_hash(str(event.data[DEDUPE_KEY])),
        )

    def _emails(self, events: list[Event]) -> dict[tuple[str | None, int], str]:
        # Only the batch's recipients are read: a message may have a million.
        wanted = list(
            {
                (e.message_id, int(e.data["recipient_number"]))
                for e in events
                if e.recipient is None and e.message_id is not None
            }
        )
        rows = select_matching(
            self.db,
            (MessageRecipient.message, MessageRecipient.number, MessageRecipient.email),
            (MessageRecipient.message, MessageRecipient.number),
            wanted,
        )
        return {(message, number): email for message, number, email in rows}

    def _first_interactions(
        self, events: list[Event], interactions: dict[str, tuple[str, int, str, str]]
    ) -> dict[tuple[str, int, str, str], str]:
        if not interactions:
            return {}
        rows: dict[tuple[str, int, str, str], Event] = {}
        for event in sorted(events, key=_TIMESTAMP):
            interaction = interactions.get(event.id)
            if interaction is not None:
                rows.setdefault(interaction, event)
        # One statement claims the keys no event claimed before and returns their events; only
        # the keys already claimed are read back. Keys go in order: processes claiming some of
        # the same keys at once then wait for each other, never deadlock.
        ordered = sorted(rows.items())
        claimed = {
            event_id
            for (event_id,) in insert_new(
                self.db,
                INTERACTION_FIELDS,
                [(*key, event.id, event.timestamp.replace(tzinfo=None)) for key, event in ordered],
                (FirstInteraction.event_id,),
            )
        }
        firsts = {key: event.id for key, event in ordered if event.id in claimed}
        earlier = [key for key, event in ordered if event.id not in claimed]
        stored = select_matching(self.db, INTERACTION_FIELDS[:5], INTERACTION_KEY, earlier)
        for message, number, kind, key_hash, event_id in stored:
            firsts[(message, number, kind, key_hash)] = event_id
        return firsts
