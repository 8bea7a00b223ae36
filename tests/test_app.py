"""The app shell: health, readiness, errors as JSON, request ids, plugin routes end to end."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path

import pytest
from quart import Blueprint

from core import hookimpl
from core.events import Event
from core.instrument import instrument
from core.pipeline import Document, Recipient
from core.storage import EventRecord
from core.testing import Harness

pytestmark = pytest.mark.anyio


class Broken:
    __name__ = "broken-route"

    def __init__(self) -> None:
        self.blueprint = Blueprint("broken", __name__)

        @self.blueprint.get("/broken")
        async def broken() -> str:
            raise RuntimeError("secret internal detail")

        @self.blueprint.get("/broken/<token>")
        async def broken_with_token(token: str) -> str:
            raise RuntimeError("failed")

    @hookimpl
    def register_routes(self) -> Iterable[Blueprint]:
        return [self.blueprint]


async def test_health_and_ready(tmp_path):
    async with Harness(tmp_path).serving() as client:
        health = await client.get("/health")
        assert (health.status_code, await health.get_json()) == (200, {"status": "healthy"})
        ready = await client.get("/ready")
        assert (ready.status_code, await ready.get_json()) == (200, {"status": "ready"})


async def test_ready_is_503_when_the_database_is_unreachable(tmp_path):
    harness = Harness(tmp_path)
    async with harness.serving() as client:
        database = Path(harness.config.database_url.removeprefix("sqlite:///"))
        for leftover in database.parent.glob(database.name + "*"):
            leftover.unlink()
        database.mkdir()  # nothing can open a directory as a database
        try:
            ready = await client.get("/ready")
            assert ready.status_code == 503
            assert (await ready.get_json())["status"] == "unavailable"
            assert (await client.get("/health")).status_code == 200
        finally:
            shutil.rmtree(database)


async def test_unhandled_error_is_json_500_without_traceback(tmp_path):
    async with Harness(tmp_path, plugins=[Broken()]).serving() as client:
        response = await client.get("/broken", headers={"X-Request-Id": "req-123"})
        body = await response.get_data(as_text=True)
        assert response.status_code == 500
        assert json.loads(body) == {"error": "internal server error", "request_id": "req-123"}
        assert "Traceback" not in body
        assert "secret internal detail" not in body


async def test_a_failed_request_is_logged_by_route_never_with_the_token_in_its_path(
    tmp_path, capfd
):
    token = "recipient-token-" + "x" * 20
    async with Harness(tmp_path, plugins=[Broken()]).serving() as client:
        response = await client.get(f"/broken/{token}")
        assert response.status_code == 500
    logged = capfd.readouterr()
    failures = [
        json.loads(line)
        for line in (logged.out + logged.err).splitlines()
        if '"request.failed"' in line
    ]
    assert [failure["route"] for failure in failures] == ["/broken/<token>"]
    assert token not in logged.out + logged.err


async def test_unknown_route_and_method_are_json(tmp_path):
    async with Harness(tmp_path).serving() as client:
        missing = await client.get("/no/such/route")
        assert missing.status_code == 404
        assert "error" in await missing.get_json()
        wrong = await client.post("/health")
        assert wrong.status_code == 405
        assert "error" in await wrong.get_json()


async def test_oversized_body_is_413_json(tmp_path):
    harness = Harness(tmp_path, server={"http": {"max_body_bytes": 2048}})
    async with harness.serving() as client:
        response = await client.put(
            "/api/admin/tenants/acme/tracking",
            data=b"{" + b" " * 4096 + b"}",
            headers={
                "Authorization": f"Bearer {harness.admin_token('acme')}",
                "Content-Type": "application/json",
            },
        )
        assert response.status_code == 413
        assert "larger than 2048 bytes" in (await response.get_json())["error"]


async def test_request_id_is_echoed_or_generated(tmp_path):
    async with Harness(tmp_path).serving() as client:
        given = await client.get("/health", headers={"X-Request-Id": "abc-1"})
        assert given.headers["X-Request-Id"] == "abc-1"
        hostile = await client.get("/health", headers={"X-Request-Id": "x\u00e9 y"})
        assert hostile.headers["X-Request-Id"] != "x\u00e9 y"
        assert len(hostile.headers["X-Request-Id"]) == 32


async def test_every_response_carries_its_request_id_errors_and_log_lines_included(tmp_path, capfd):
    async with Harness(tmp_path, plugins=[Broken()]).serving() as client:
        missing = await client.get("/no/such/route", headers={"X-Request-Id": "lost.1"})
        assert (missing.status_code, missing.headers["X-Request-Id"]) == (404, "lost.1")
        failed = await client.get("/broken")
        generated = failed.headers["X-Request-Id"]
        assert (await failed.get_json())["request_id"] == generated
        other = await client.get("/broken")
        assert other.headers["X-Request-Id"] not in {generated, ""}
    logged = capfd.readouterr()
    failures = [
        json.loads(line)
        for line in (logged.out + logged.err).splitlines()
        if '"request.failed"' in line
    ]
    assert [failure["request_id"] for failure in failures] == [
        generated,
        other.headers["X-Request-Id"],
    ]


async def test_third_party_feature_end_to_end(tmp_path):
    """The README's minimal plugin: schema, instrument hook and route, all working together."""
    example = pytest.importorskip("scaisend_example")
    harness = Harness(
        tmp_path,
        plugins=[example],
        tenants={
            "acme": {
                "tracking": {"example_view_link": {"label": "Open <online>"}},
                "plugins": {"example_view_link": {"event_type": "browser_view"}},
            }
        },
    )
    async with harness.serving() as client:
        runtime = harness.runtime
        tenant = harness.config.tenants["acme"]
        settings = runtime.effective_settings(tenant)
        compiled, applied = instrument(
            harness.plugins,
            Document(html="<html><body><p>News</p></body></html>"),
            tenant=tenant,
            settings=settings,
            message_id="msg-1",
            tracking_base_url=harness.config.tracking_base_url,
            tokens=runtime.tokens,
        )
        assert "example_view_link" in applied
        token = runtime.tokens.issue("acme", "msg-1", 0)
        html = compiled.html.stamp(Recipient(0, "a@example.test", token))
        link = f"https://track.example.test/example/view/{token}"
        assert f'<body><p><a href="{link}">Open &lt;online&gt;</a></p><p>News</p>' in html

        response = await client.get(f"/example/view/{token}")
        assert response.status_code == 204
        forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
        assert (await client.get(f"/example/view/{forged}")).status_code == 404
        assert runtime.bus.flush()
    rows = list(EventRecord.select().where(EventRecord.type == "browser_view"))
    assert [(r.tenant, r.message_id) for r in rows] == [("acme", "msg-1")]
    lines = (harness.config.data_dir / "events.jsonl").read_text().splitlines()
    assert [json.loads(line)["type"] for line in lines] == ["browser_view"]


async def test_events_survive_an_app_restart_through_the_journal(tmp_path):
    """Events emitted while a sink cannot keep up are delivered by the next process."""
    harness = Harness(tmp_path)
    runtime = harness.open_runtime()  # bus never started: nothing is delivered
    for n in range(5):
        runtime.emit(Event(type="open", tenant="acme", message_id=f"m{n}"))
    runtime.bus.journal.close()
    async with harness.serving():
        assert harness.runtime.bus.flush()
        stored = sorted(r.message_id for r in EventRecord.select())
    assert stored == [f"m{n}" for n in range(5)]
