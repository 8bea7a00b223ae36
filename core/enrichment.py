"""Facts only the database knows, added to events after they are journaled, before sinks.

Tracking routes answer without touching the database, so the event they journal says which
recipient *number* of which message it concerns, nothing more. Before any sink sees it, this
step adds, in one transaction per batch (on PostgreSQL a large batch takes two at once, for
recipients that do not overlap):

- ``recipient``: the address that number stands for;
- ``data.unique``: for events that carry ``data.dedupe_key`` (opens: ``""``; clicks: the URL),
  whether this is the first such event for that recipient, decided by a primary key that every
  process sharing the database respects;
- the first-open time of the message recipient, set by its first unique ``open``.

It is idempotent: an event processed again (after a crash, or for a second sink) gets the same
answer, because the first interaction remembers which event it was.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import peewee as pw

from core.events import Event
from core.storage import FirstInteraction, MessageRecipient
from core.storage.bulk import SetFromInserted, insert_new, select_matching, set_where_null

DEDUPE_KEY = "dedupe_key"

_INTERACTION_FIELDS = (
    FirstInteraction.message_id,
    FirstInteraction.recipient_number,
    FirstInteraction.kind,
    FirstInteraction.key_hash,
    FirstInteraction.event_id,
    FirstInteraction.at,
)

_FIRST_OPEN = SetFromInserted(
    target=MessageRecipient.first_open_at,
    keys=(MessageRecipient.message, MessageRecipient.number),
    sources=(FirstInteraction.message_id, FirstInteraction.recipient_number),
    value=FirstInteraction.at,
    when=(FirstInteraction.kind, "open"),
)
"""Each open that is the first for its recipient sets the recipient's first-open time."""


def _key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


_Answer = tuple[str | None, bool | None]
"""What enrichment adds to one event: its recipient's address and whether it is the unique one
(``None``: nothing to add). A tuple of plain values, which the garbage collector stops tracking:
a cache of whole events would have every full collection walk all of them while every thread,
the event loop's included, waits."""

_NOTHING: _Answer = (None, None)

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
        return dataclasses.replace(event, **changes) if changes else event

    def _answers(self, events: list[Event]) -> dict[str, _Answer]:
        relevant = [e for e in events if e.message_id is not None and "recipient_number" in e.data]
        answers = dict.fromkeys((event.id for event in events), _NOTHING)
        if len(relevant) < _PARALLEL_FROM or not isinstance(self.db, pw.PostgresqlDatabase):
            answers.update(self._answers_in_one_transaction(relevant))
            return answers
        # The database server's work dominates: halves that share no recipient (so no row and
        # no first interaction) go in two transactions on two connections at once.
        halves: tuple[list[Event], list[Event]] = ([], [])
        for event in relevant:
            halves[hash((event.message_id, event.data["recipient_number"])) & 1].append(event)
        for half in self._workers.map(self._answers_on_a_pooled_connection, halves):
            answers.update(half)
        return answers

    def _answers_on_a_pooled_connection(self, events: list[Event]) -> dict[str, _Answer]:
        try:
            return self._answers_in_one_transaction(events)
        finally:
            self.db.close()  # back to the pool: an idle worker holds no connection

    def _answers_in_one_transaction(self, relevant: list[Event]) -> dict[str, _Answer]:
        if not relevant:
            return {}
        # Each event's interaction key is worked out once: hashing it is the per-event cost.
        interactions = {e.id: self._interaction(e) for e in relevant if DEDUPE_KEY in e.data}
        self.db.connect(reuse_if_open=True)
        # Every statement below runs on self.db, inside this one transaction, whichever
        # database the models' proxy was last pointed at.
        with self.db.atomic():
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
            _key_hash(str(event.data[DEDUPE_KEY])),
        )

    def _emails(self, events: list[Event]) -> dict[tuple[str | None, int], str]:
        # Only the batch's recipients are read: a message may have a million.
        wanted = sorted(
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
        for event in sorted(events, key=lambda e: e.timestamp):
            interaction = interactions.get(event.id)
            if interaction is not None:
                rows.setdefault(interaction, event)
        # One statement claims the keys no event claimed before and sets the first-open time of
        # each open that claims one; only the keys already claimed are read back.
        claimed = insert_new(
            self.db,
            _INTERACTION_FIELDS,
            [(*key, event.id, event.timestamp.replace(tzinfo=None)) for key, event in rows.items()],
            _INTERACTION_FIELDS[:5],
            then=_FIRST_OPEN,
        )
        firsts = {
            (message, number, kind, key_hash): event_id
            for message, number, kind, key_hash, event_id in claimed
        }
        earlier = {key for key in rows if key not in firsts}
        stored = select_matching(
            self.db, _INTERACTION_FIELDS[:5], _INTERACTION_FIELDS[:4], sorted(earlier)
        )
        for message, number, kind, key_hash, event_id in stored:
            firsts[(message, number, kind, key_hash)] = event_id
        # An open processed again owns its key from before; its first-open time was set then,
        # unless its recipient was stored only since.
        self._record_first_opens(
            [event for key, event in rows.items() if key in earlier and firsts.get(key) == event.id]
        )
        return firsts

    def _record_first_opens(self, owners: list[Event]) -> None:
        set_where_null(
            self.db,
            MessageRecipient.first_open_at,
            (MessageRecipient.message, MessageRecipient.number),
            [
                (
                    event.timestamp.replace(tzinfo=None),
                    event.message_id,
                    event.data["recipient_number"],
                )
                for event in owners
                if event.type == "open"
            ],
        )
