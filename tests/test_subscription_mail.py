"""Unsubscribing by mail: the ``mailto:`` of ``List-Unsubscribe`` over the inbound SMTP port."""

from __future__ import annotations

import email
import email.policy
import re
import smtplib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import anyio
import pytest

from core.app import INBOUND
from core.storage import EventRecord
from core.testing import Harness

pytestmark = pytest.mark.anyio

BOUNCES = "bounces.example.test"
MAILBOX = f"unsubscribe@{BOUNCES}"
MAILTO = re.compile(r"<mailto:([^?>]+)\?subject=([^>]+)>")


@dataclass
class Server:
    harness: Harness
    port: int

    async def send(self, to: str, asm: dict | None = None) -> str:
        client = self.harness.quart_app.test_client()
        body: dict = {
            "personalizations": [{"to": [{"email": to}]}],
            "from": {"email": "news@example.org"},
            "subject": "News",
            "content": [{"type": "text/plain", "value": "Hello"}],
        }
        if asm is not None:
            body["asm"] = asm
        response = await client.post(
            "/v3/mail/send",
            headers={"Authorization": f"Bearer {self.harness.api_key('acme')}"},
            json=body,
        )
        assert response.status_code == 202, await response.get_data()
        await self.harness.background_work_done()
        return str((await response.get_json())["message_id"])

    def outbox(self, message_id: str) -> list[Path]:
        return sorted((self.harness.config.data_dir / "outbox").glob(f"{message_id}-*.eml"))

    def mailto(self, message_id: str) -> tuple[str, str]:
        """The address and subject the copy's ``List-Unsubscribe`` asks a client to send."""
        [path] = self.outbox(message_id)
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        match = MAILTO.search(str(message["List-Unsubscribe"]))
        assert match is not None, message["List-Unsubscribe"]
        return unquote(match.group(1)), unquote(match.group(2))

    async def mail(self, sender: str, rcpt: str, subject: str) -> int:
        letter = f"From: {sender}\r\nTo: {rcpt}\r\nSubject: {subject}\r\n\r\n\r\n".encode()

        def session() -> int:
            with smtplib.SMTP("127.0.0.1", self.port, timeout=10) as client:
                client.ehlo()
                assert client.mail(sender)[0] == 250
                assert client.rcpt(rcpt)[0] == 250
                return client.data(letter)[0]

        return await anyio.to_thread.run_sync(session)

    async def events(self, kind: str) -> list[EventRecord]:
        assert await anyio.to_thread.run_sync(self.harness.runtime.bus.flush)
        query = EventRecord.select().where(EventRecord.type == kind)
        return await anyio.to_thread.run_sync(lambda: list(query))

    async def listed(self, address: str, kind: str, group_id: int | None = None) -> bool:
        return await anyio.to_thread.run_sync(
            lambda: self.harness.runtime.suppressions.contains(
                "acme", address, kind, group_id=group_id
            )
        )


@asynccontextmanager
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    harness = Harness(
        tmp_path,
        tenants={
            "acme": {
                "api_keys": ["acme-key-0123456789abcdef0123456789"],
                "tracking": {"subscription_tracking": {"enable": True}},
                "plugins": {
                    "subscription_tracking": {
                        "unsubscribe_mailbox": MAILBOX,
                        "groups": [{"id": 7, "name": "Offers"}],
                    }
                },
            }
        },
        server={"bounce_domain": BOUNCES},
    )
    async with harness.serving():
        yield Server(harness, harness.quart_app.extensions[INBOUND].port)


async def test_mail_to_the_list_unsubscribe_address_unsubscribes_and_drops_the_next_send(
    tmp_path,
):
    async with server(tmp_path) as s:
        message_id = await s.send("ann@example.com")
        address, subject = s.mailto(message_id)
        assert address == MAILBOX
        assert subject.startswith("unsubscribe ")

        assert await s.mail("ann@example.com", address, subject) == 250

        assert await s.listed("ann@example.com", "unsubscribe")
        [event] = await s.events("unsubscribe")
        assert (event.message_id, event.recipient) == (message_id, "ann@example.com")
        assert event.data["source"] == "mail"
        # A client sending the request twice changes nothing more.
        assert await s.mail("ann@example.com", address, f"Re: {subject}") == 250
        assert len(await s.events("unsubscribe")) == 1

        second = await s.send("ann@example.com")
        assert s.outbox(second) == []
        [dropped] = [e for e in await s.events("dropped") if e.message_id == second]
        assert dropped.data["suppression"] == "unsubscribe"


async def test_a_group_send_is_left_by_mail_for_that_group_only(tmp_path):
    async with server(tmp_path) as s:
        message_id = await s.send("bob@example.com", asm={"group_id": 7})
        address, subject = s.mailto(message_id)

        assert await s.mail("bob@example.com", address, subject) == 250

        assert await s.listed("bob@example.com", "group_unsubscribe", group_id=7)
        assert not await s.listed("bob@example.com", "unsubscribe")


@pytest.mark.parametrize(
    "forge",
    [
        lambda subject, address: (subject[:-3] + "AAA", address),  # a tampered token
        lambda subject, address: ("unsubscribe", address),  # no token at all
        lambda subject, address: (subject, f"postmaster@{BOUNCES}"),  # not the mailbox
    ],
    ids=["tampered-token", "no-token", "other-address"],
)
async def test_mail_without_a_valid_request_unsubscribes_no_one_and_is_kept(tmp_path, forge):
    async with server(tmp_path) as s:
        message_id = await s.send("cat@example.com")
        subject, address = forge(*s.mailto(message_id)[::-1])

        assert await s.mail("cat@example.com", address, subject) == 250

        assert not await s.listed("cat@example.com", "unsubscribe")
        assert await s.events("unsubscribe") == []
        kept = s.harness.config.data_dir / "inbound" / "unclaimed"
        assert len(list(kept.iterdir())) == 1
