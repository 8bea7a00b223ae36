"""Accepted sends survive a crash: spooled before the 202, resumed on the next start."""

from __future__ import annotations

import pytest

from core.api import ScaiSend
from core.send.service import SendService
from core.send.spool import Spool
from core.testing import Harness

BODY = {
    "personalizations": [{"to": [{"email": f"r{n}@example.com"} for n in range(5)]}],
    "from": {"email": "news@example.org"},
    "subject": "Resumed",
    "content": [{"type": "text/html", "value": "<html><body>Hi</body></html>"}],
}


def test_spool_round_trip_ignores_a_torn_last_line(tmp_path):
    spool = Spool(tmp_path)
    spool.put("m1", "acme", {"a": 1}, {"open_tracking": {"enable": True}})
    spool.mark_done("m1", [0, 1])
    with (tmp_path / "m1.done").open("a") as done:
        done.write("12")  # a crash in the middle of writing "123\n"
    (pending,) = spool.pending()
    assert (pending.message_id, pending.tenant, pending.body) == ("m1", "acme", {"a": 1})
    assert pending.done == {0, 1}
    spool.remove("m1")
    assert list(spool.pending()) == []


@pytest.mark.anyio
async def test_server_start_resumes_what_a_crash_left_undelivered(tmp_path):
    harness = Harness(tmp_path)
    # A first process accepts the send and delivers two copies, then dies.
    runtime = harness.open_runtime()
    service = SendService(runtime)
    prepared = service.prepare(harness.config.tenants["acme"], BODY)
    service.persist(prepared)
    service.spool.mark_done(prepared.message_id, [0, 1])
    expected = {m.recipient: m for m in service.outgoing(prepared)}
    runtime.bus.journal.close()

    outbox = harness.config.data_dir / "outbox"
    async with harness.serving():
        await harness.background_work_done()
    files = sorted(outbox.glob("*.eml"))
    assert [f.name for f in files] == [f"{prepared.message_id}-{n:06d}.eml" for n in (2, 3, 4)]
    for number, path in zip((2, 3, 4), files, strict=True):
        resent = path.read_bytes()
        original = expected[number].data
        # Same message id, tokens and envelope; only the Date line and boundaries may differ.
        assert _stable(resent) == _stable(original)
    assert list(Spool(harness.config.data_dir / "spool").pending()) == []


def _stable(message: bytes) -> list[bytes]:
    return [line for line in message.split(b"\r\n") if not line.startswith(b"Date:")]


def test_python_api_sends_and_clears_the_spool(tmp_path):
    harness = Harness(tmp_path)
    with ScaiSend(loaded=harness.loaded) as scaisend:
        message_id = scaisend.send(BODY, tenant="acme")
    outbox = harness.config.data_dir / "outbox"
    assert len(list(outbox.glob(f"{message_id}-*.eml"))) == 5
    assert list(Spool(harness.config.data_dir / "spool").pending()) == []
