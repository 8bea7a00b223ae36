"""Suppression lists on SQLite and PostgreSQL, and plugin tables through ``register_models``."""

from __future__ import annotations

import threading
from collections.abc import Iterable

import peewee as pw
import pytest

from core import hookimpl
from core.storage import database_proxy
from core.suppressions import SuppressionStore
from core.testing import Harness
from tests.test_storage import database_url, db, migrated  # noqa: F401 - fixtures

NOBODY_BYPASSES = lambda flag: False  # noqa: E731


@pytest.fixture
def store(migrated: pw.Database) -> SuppressionStore:  # noqa: F811
    return SuppressionStore(migrated)


def test_adding_is_idempotent_and_case_insensitive(store):
    assert store.add("acme", "Reader@Example.COM", "unsubscribe", reason="footer link")
    assert not store.add("acme", "reader@example.com", "unsubscribe")
    assert store.contains("acme", "READER@example.com", "unsubscribe")
    entries, total = store.page("acme", "unsubscribe")
    assert total == 1
    assert [(e.email, e.reason) for e in entries] == [("reader@example.com", "footer link")]


def test_lists_are_per_tenant_and_per_kind(store):
    store.add("acme", "a@example.com", "bounce")
    assert not store.contains("globex", "a@example.com", "bounce")
    assert not store.contains("acme", "a@example.com", "spamreport")
    assert store.screen("globex", ["a@example.com"], group_id=None, bypasses=NOBODY_BYPASSES) == {}


def test_removing_twice_is_not_an_error(store):
    store.add("acme", "a@example.com", "group_unsubscribe", group_id=7)
    assert store.remove("acme", "A@example.com", "group_unsubscribe", group_id=7)
    assert not store.remove("acme", "a@example.com", "group_unsubscribe", group_id=7)
    assert not store.contains("acme", "a@example.com", "group_unsubscribe", group_id=7)


def test_group_ids_go_with_group_unsubscribes_only(store):
    with pytest.raises(ValueError, match="group_id"):
        store.add("acme", "a@example.com", "group_unsubscribe")
    with pytest.raises(ValueError, match="group_id"):
        store.add("acme", "a@example.com", "bounce", group_id=3)
    with pytest.raises(ValueError, match="unknown"):
        store.add("acme", "a@example.com", "nonsense")  # type: ignore[arg-type]


def test_screen_names_the_list_and_honours_bypass_flags(store):
    store.add("acme", "unsub@example.com", "unsubscribe")
    store.add("acme", "group@example.com", "group_unsubscribe", group_id=5)
    store.add("acme", "bounced@example.com", "bounce")
    store.add("acme", "spam@example.com", "spamreport")
    store.add("acme", "spam@example.com", "bounce")
    everyone = [
        "unsub@example.com",
        "Group@example.com",
        "bounced@example.com",
        "spam@example.com",
        "fine@example.com",
    ]

    assert store.screen("acme", everyone, group_id=5, bypasses=NOBODY_BYPASSES) == {
        "unsub@example.com": "unsubscribe",
        "group@example.com": "group_unsubscribe",
        "bounced@example.com": "bounce",
        "spam@example.com": "bounce",
    }
    # The group list counts only for sends to that group.
    assert "group@example.com" not in store.screen(
        "acme", everyone, group_id=6, bypasses=NOBODY_BYPASSES
    )
    assert "group@example.com" not in store.screen(
        "acme", everyone, group_id=None, bypasses=NOBODY_BYPASSES
    )
    assert store.screen("acme", everyone, group_id=5, bypasses=lambda f: f == "bounce") == {
        "unsub@example.com": "unsubscribe",
        "group@example.com": "group_unsubscribe",
        "spam@example.com": "spamreport",
    }
    assert store.screen("acme", everyone, group_id=5, bypasses=lambda f: f == "unsubscribe") == {
        "bounced@example.com": "bounce",
        "spam@example.com": "bounce",
    }
    assert store.screen("acme", everyone, group_id=5, bypasses=lambda f: True) == {}


def test_screening_a_large_send_finds_every_listed_address(store):
    listed = [f"user{n}@example.com" for n in range(0, 1500, 7)]
    for email in listed:
        store.add("acme", email, "unsubscribe")
    everyone = [f"user{n}@example.com" for n in range(1500)]
    screened = store.screen("acme", everyone, group_id=None, bypasses=NOBODY_BYPASSES)
    assert sorted(screened) == sorted(listed)


def test_pages_cover_the_list_once(store):
    for n in range(25):
        store.add("acme", f"user{n:02}@example.com", "spamreport")
    seen = []
    for offset in range(0, 30, 10):
        entries, total = store.page("acme", "spamreport", offset=offset, limit=10)
        assert total == 25
        seen += [entry.email for entry in entries]
    assert sorted(seen) == [f"user{n:02}@example.com" for n in range(25)]


def test_concurrent_adds_of_one_address_list_it_once(migrated):  # noqa: F811
    """Eight clicks on one unsubscribe link at once, each request on its own thread and
    connection (as the server runs them): one row, one "new"."""
    results: list[bool] = []
    barrier = threading.Barrier(8)
    store = SuppressionStore(migrated)

    def add() -> None:
        barrier.wait(timeout=30)
        results.append(store.add("acme", "twice@example.com", "unsubscribe"))

    threads = [threading.Thread(target=add) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(results) == [False] * 7 + [True]
    assert store.page("acme", "unsubscribe")[1] == 1


class Note(pw.Model):
    text = pw.TextField()

    class Meta:
        database = database_proxy
        table_name = "example_notes"


class NotesPlugin:
    @hookimpl
    def register_models(self) -> Iterable[type[pw.Model]]:
        return [Note]


class BrokenModelsPlugin:
    @hookimpl
    def register_models(self) -> Iterable[object]:
        return ["not a model"]


def test_a_plugin_keeps_its_own_table_in_the_server_database(tmp_path):
    harness = Harness(tmp_path, plugins=[NotesPlugin(), BrokenModelsPlugin()])
    runtime = harness.open_runtime()
    try:
        with runtime.db.connection_context():
            assert "example_notes" in runtime.db.get_tables()
            Note.create(text="kept")
        assert [note.text for note in Note.select()] == ["kept"]
    finally:
        runtime.close()
