"""Reading back only the rows a batch names, on SQLite and PostgreSQL."""

from __future__ import annotations

import peewee as pw
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.storage import INTERACTION_FIELDS, INTERACTION_KEY, FirstInteraction
from core.storage.bulk import insert_ignoring_conflicts, select_matching


def stored(database: pw.Database, keys: list[tuple[str, int, str, str]]) -> None:
    with database.connection_context(), database.atomic():
        FirstInteraction.delete().execute(database)
        insert_ignoring_conflicts(
            database,
            INTERACTION_FIELDS,
            [(*key, f"e-{n}", "2026-01-01 00:00:00") for n, key in enumerate(keys)],
        )


key = st.tuples(
    st.sampled_from(["m1", "m2", "m'3"]),
    st.integers(0, 5),
    st.sampled_from(["open", "click"]),
    st.sampled_from(["", "a", "b\tc"]),
)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    present=st.lists(key, unique=True, max_size=40),
    asked=st.lists(key, unique=True, max_size=40),
    page_size=st.integers(1, 7),
)
def test_only_the_asked_keys_come_back(database, present, asked, page_size):
    stored(database, present)
    with database.connection_context():
        rows = select_matching(
            database,
            (*INTERACTION_KEY, FirstInteraction.event_id),
            INTERACTION_KEY,
            asked,
            page_size=page_size,
        )
    owners = {k: f"e-{n}" for n, k in enumerate(present)}
    assert sorted(rows) == sorted((*k, owners[k]) for k in asked if k in owners)


def test_nothing_asked_reads_nothing(database):
    stored(database, [("m1", 0, "open", "")])
    with database.connection_context():
        assert select_matching(database, INTERACTION_KEY, INTERACTION_KEY, []) == []
