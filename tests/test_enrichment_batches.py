"""Enrichment of batches as large as the bus delivers under load, on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import datetime as dt

import peewee as pw

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
