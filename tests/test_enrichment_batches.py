"""Enrichment of batches as large as the bus delivers under load, on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib

import peewee as pw
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.enrichment import EventEnricher
from core.events import Event
from core.storage import FirstInteraction, Message, MessageRecipient, first_open_times

MESSAGES = 300
RECIPIENTS = 4
START = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


def address(message: int, number: int) -> str:
    return f"r{number}@m{message}.example"


def recipients_stored(db: pw.Database) -> None:
    with db.connection_context(), db.atomic():
        Message.insert_many([{"id": f"m{m}", "tenant": "acme"} for m in range(MESSAGES)]).execute()
        MessageRecipient.insert_many(
            [
                {"message": f"m{m}", "number": n, "email": address(m, n)}
                for m in range(MESSAGES)
                for n in range(RECIPIENTS)
            ]
        ).execute()


def opens(round_: int) -> list[Event]:
    """One open per recipient, each a second later than the same recipient's previous round."""
    return [
        Event(
            type="open",
            tenant="acme",
            message_id=f"m{m}",
            timestamp=START + dt.timedelta(seconds=round_, milliseconds=m * RECIPIENTS + n),
            data={"recipient_number": n, "dedupe_key": ""},
        )
        for m in range(MESSAGES)
        for n in range(RECIPIENTS)
    ]


def stored_first_opens() -> dict[tuple[str, int], dt.datetime]:
    return {
        (f"m{m}", number): at
        for m in range(MESSAGES)
        for number, at in first_open_times(f"m{m}").items()
    }


def test_a_large_batch_gets_addresses_unique_opens_and_first_open_times(database):
    recipients_stored(database)
    first, second, third = opens(0), opens(1), opens(2)
    batch = second + first  # repeats arrive in the same batch, listed before the first opens

    enriched = EventEnricher(database)(batch)

    assert [event.recipient for event in enriched] == [
        address(m, n) for _ in range(2) for m in range(MESSAGES) for n in range(RECIPIENTS)
    ]
    unique = {event.id: event.data["unique"] for event in enriched}
    assert all(unique[event.id] for event in first)
    assert not any(unique[event.id] for event in second)
    with database.connection_context():
        stored = stored_first_opens()
        assert FirstInteraction.select().count() == MESSAGES * RECIPIENTS
    assert stored == {
        (event.message_id, event.data["recipient_number"]): event.timestamp.replace(tzinfo=None)
        for event in first
    }

    # Another process (no cache) given the same batch again, then a later one, agrees.
    again = EventEnricher(database)
    assert [e.data["unique"] for e in again(batch)] == [e.data["unique"] for e in enriched]
    assert not any(event.data["unique"] for event in again(third))
    with database.connection_context():
        assert stored_first_opens() == stored


def test_enrichment_changes_only_the_address_and_the_unique_flag(database):
    recipients_stored(database)
    event = Event(
        type="open",
        tenant="acme",
        message_id="m7",
        timestamp=START,
        data={"recipient_number": 2, "dedupe_key": "", "ip": "203.0.113.7"},
        bot={"verdict": "human", "score": 0.1},
    )

    (enriched,) = EventEnricher(database)([event])

    assert enriched == dataclasses.replace(
        event, recipient=address(7, 2), data={**event.data, "unique": True}
    )


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    keys=st.lists(
        st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")),
        min_size=1,
        max_size=6,
        unique=True,
    ),
    stored=st.data(),
)
def test_keys_claimed_before_by_any_process_are_recognised(database, keys, stored):
    """A click's key is hashed the same way by every process: one claimed before (here
    written as the first interactions table holds it) makes the click a repeat, whatever
    characters the key holds; a new key is claimed by the click."""
    before = stored.draw(st.sets(st.sampled_from(keys)))
    with database.connection_context():
        FirstInteraction.delete().execute()
        for key in before:
            FirstInteraction.create(
                message_id="m1",
                recipient_number=0,
                kind="click",
                key_hash=hashlib.sha256(key.encode()).hexdigest(),
                event_id=f"earlier {key}",
                at=START.replace(tzinfo=None),
            )
    clicks = [
        Event(
            type="click",
            tenant="acme",
            message_id="m1",
            recipient="r0@m1.example",
            data={"recipient_number": 0, "dedupe_key": key},
        )
        for key in keys
    ]

    enriched = EventEnricher(database)(clicks)

    assert [event.data["unique"] for event in enriched] == [key not in before for key in keys]
