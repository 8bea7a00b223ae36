"""What the database adds to tracking events: the address, unique opens and clicks, first open."""

from __future__ import annotations

import pytest

from core.enrichment import EventEnricher
from core.events import Event
from core.send.service import SendService
from core.storage import EventRecord, first_open_times
from core.testing import Harness
from tests.conftest import postgres_url

BODY = {
    "personalizations": [{"to": [{"email": "ann@example.com"}, {"email": "bob@example.com"}]}],
    "from": {"email": "news@example.org"},
    "subject": "Hi",
    "content": [
        {
            "type": "text/html",
            "value": "<html><body><a href='https://a.example/'>a</a></body></html>",
        }
    ],
}


def sent(harness: Harness) -> str:
    runtime = harness.open_runtime()
    try:
        service = SendService(runtime)
        prepared = service.prepare(harness.config.tenants["acme"], BODY)
        service.persist(prepared)
        runtime.start()
        assert runtime.bus.flush()
    finally:
        runtime.close()
    return prepared.message_id


@pytest.mark.anyio
async def test_opens_and_clicks_through_the_routes(tmp_path):
    harness = Harness(tmp_path)
    message_id = sent(harness)
    async with harness.serving() as client:
        tokens = harness.runtime.tokens
        ann, bob = tokens.issue("acme", message_id, 0), tokens.issue("acme", message_id, 1)
        for token in (ann, ann, bob):
            assert (await client.get(f"/t/o/{token}.gif")).status_code == 200
        for token, url in (
            (ann, "https://a.example/"),
            (ann, "https://a.example/"),
            (ann, "https://b.example/"),
            (bob, "https://a.example/"),
        ):
            binding = tokens.bind(message_id, url)
            response = await client.get(f"/t/c/{token}", query_string={"u": url, "s": binding})
            assert response.status_code == 302
        assert harness.runtime.bus.flush()
    opens = EventRecord.select().where(EventRecord.type == "open").order_by(EventRecord.timestamp)
    assert [(e.recipient, e.data["unique"]) for e in opens] == [
        ("ann@example.com", True),
        ("ann@example.com", False),
        ("bob@example.com", True),
    ]
    clicks = EventRecord.select().where(EventRecord.type == "click").order_by(EventRecord.timestamp)
    assert [(e.recipient, e.data["url"], e.data["unique"]) for e in clicks] == [
        ("ann@example.com", "https://a.example/", True),
        ("ann@example.com", "https://a.example/", False),
        ("ann@example.com", "https://b.example/", True),
        ("bob@example.com", "https://a.example/", True),
    ]
    first_ann_open = opens[0].timestamp
    first_bob_open = next(e.timestamp for e in opens if e.recipient == "bob@example.com")
    assert first_open_times(message_id) == {0: first_ann_open, 1: first_bob_open}


def click(message_id: str, number: int, url: str) -> Event:
    return Event(
        type="click",
        tenant="acme",
        message_id=message_id,
        data={"recipient_number": number, "url": url, "dedupe_key": url},
    )


def test_enrichment_is_idempotent(tmp_path):
    harness = Harness(tmp_path)
    message_id = sent(harness)
    runtime = harness.open_runtime()
    try:
        events = [
            click(message_id, 0, "https://a.example/"),
            click(message_id, 0, "https://a.example/"),
        ]
        first = EventEnricher(runtime.db)(events)
        again = EventEnricher(runtime.db)(events)  # a fresh process, nothing cached
        assert [e.data["unique"] for e in first] == [True, False]
        assert first == again
        assert first[0].recipient == "ann@example.com"
    finally:
        runtime.close()


def shared_database_clicks(tmp_path, database_url: str) -> list[bool]:
    """Two nodes with their own journals and one database see the same click twice."""
    one = Harness(tmp_path / "one", database_url=database_url)
    two = Harness(tmp_path / "two", database_url=database_url)
    two.document["server"]["signing_keys"] = one.document["server"]["signing_keys"]
    message_id = sent(one)
    runtimes = [one.open_runtime(), two.open_runtime()]
    try:
        for runtime in runtimes:
            runtime.emit(click(message_id, 1, "https://a.example/"))
        for runtime in runtimes:
            runtime.start()
        for runtime in runtimes:
            assert runtime.bus.flush()
        rows = EventRecord.select().where(EventRecord.type == "click")
        return sorted(row.data["unique"] for row in rows)
    finally:
        for runtime in runtimes:
            runtime.close()


def test_nodes_sharing_sqlite_agree_on_the_unique_click(tmp_path):
    assert shared_database_clicks(tmp_path, f"sqlite:///{tmp_path / 'shared.db'}") == [False, True]


@pytest.mark.postgres
def test_nodes_sharing_postgresql_agree_on_the_unique_click(tmp_path):
    url = postgres_url()
    from core.storage import FirstInteraction, connect_database, migrate

    db = connect_database(url)
    migrate(db)
    with db.connection_context():
        FirstInteraction.delete().execute()
        EventRecord.delete().execute()
    assert shared_database_clicks(tmp_path, url) == [False, True]
