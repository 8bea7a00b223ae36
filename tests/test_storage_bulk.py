"""Batched writes store every value exactly, whatever characters it holds, on both databases.

On PostgreSQL the values travel as COPY text and as array literals built by hand, so quotes,
backslashes, braces, commas, tabs, line breaks and text that reads like NULL must all survive.
"""

from __future__ import annotations

import datetime as dt

import peewee as pw
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from core.storage import INTERACTION_FIELDS, INTERACTION_KEY, EventRecord, FirstInteraction
from core.storage.bulk import insert_ignoring_conflicts, insert_new, select_matching
from sinks.database import EVENT_FIELDS

TRICKY = ["", "NULL", "\\N", '"', "\\", "{}", "a,b", "{a}", "\t", "\n", "\r\n", " x ", "é😀", "'"]

text = st.one_of(
    st.sampled_from(TRICKY),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12),
)
moment = st.datetimes(min_value=dt.datetime(1970, 1, 1), max_value=dt.datetime(2100, 1, 1))
json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**31), 2**31) | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=6,
)

EVENT = EVENT_FIELDS  # as the database sink stores events

claim = st.tuples(text, st.integers(-(2**31), 2**31 - 1), text, text, text, moment)
event = st.tuples(
    text,
    text,
    text,
    st.none() | text,
    st.none() | text,
    moment,
    st.dictionaries(text, json_value, max_size=4),
    st.none() | st.dictionaries(text, json_value, max_size=2),
)
examples = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@examples
@given(
    before=st.lists(claim, max_size=6, unique_by=lambda row: row[:4]),
    rows=st.lists(claim, max_size=12, unique_by=lambda row: row[:4]),
)
def test_claims_answer_what_they_inserted_and_read_back_exactly(database, before, rows):
    with database.connection_context():
        FirstInteraction.delete().execute(database)
        insert_new(database, INTERACTION_FIELDS, before, (FirstInteraction.event_id,))
        taken = {row[:4] for row in before}

        inserted = insert_new(database, INTERACTION_FIELDS, rows, INTERACTION_KEY)

        assert sorted(inserted) == sorted(row[:4] for row in rows if row[:4] not in taken)
        stored = select_matching(
            database, INTERACTION_FIELDS[:5], INTERACTION_KEY, [row[:4] for row in rows]
        )
    owners = {row[:4]: row for row in before}
    assert sorted(stored) == sorted(owners.get(row[:4], row)[:5] for row in rows)


def stored_events(database: pw.Database) -> list[tuple[object, ...]]:
    return sorted(
        (e.id, e.type, e.tenant, e.message_id, e.recipient, e.timestamp, e.data, e.bot)
        for e in EventRecord.select()
    )


@examples
@given(rows=st.lists(event, max_size=10, unique_by=lambda row: row[0]), extra=event)
def test_events_are_stored_exactly_and_a_batch_stored_again_changes_nothing(database, rows, extra):
    assume(extra[0] not in {row[0] for row in rows})
    with database.connection_context():
        EventRecord.delete().execute(database)
        insert_ignoring_conflicts(database, EVENT, rows)
        assert stored_events(database) == sorted(rows)
        # Delivered again (each stored event's values changed meanwhile), with one new event.
        changed = [(*row[:6], {"changed": True}, None) for row in rows]
        insert_ignoring_conflicts(database, EVENT, [*changed, extra])
        assert stored_events(database) == sorted([*rows, extra])
