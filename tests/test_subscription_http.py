"""Subscription tracking through a real server: mail, one-click, dropped sends, and a browser."""

from __future__ import annotations

import email
import email.policy
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from core.testing import base_document, random_secret
from tests.serving import ScaisendServer, free_port, wait_for

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
GROUPS = [
    {"id": 1, "name": "Weekly news", "description": "The Friday digest"},
    {"id": 2, "name": "Offers <& deals>"},
]


@dataclass(frozen=True)
class Server:
    base: str
    data_dir: Path
    api_key: str

    def send(self, to: str, **extra: Any) -> str:
        body = {
            "personalizations": [{"to": [{"email": to}]}],
            "from": {"email": "news@acme.example"},
            "subject": "News",
            "content": [
                {"type": "text/plain", "value": "Hello"},
                {"type": "text/html", "value": "<html><body><p>Hello</p></body></html>"},
            ],
            **extra,
        }
        response = httpx.post(
            f"{self.base}/v3/mail/send",
            json=body,
            headers={"Authorization": f"Bearer {self.api_key}"},
        )
        assert response.status_code == 202, response.text
        return str(response.json()["message_id"])

    def api(self, method: str, path: str, **options: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.api_key}"}
        return httpx.request(method, f"{self.base}{path}", headers=headers, **options)

    def events(self) -> list[dict[str, Any]]:
        path = self.data_dir / "events.jsonl"
        if not path.exists():
            return []
        # The last line may still be being written: only whole lines count.
        text = path.read_text()
        return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines()]

    def copy(self, message_id: str) -> Path:
        return self.data_dir / "outbox" / f"{message_id}-000000.eml"


def event_of(server: Server, kind: str, message_id: str) -> dict[str, Any]:
    return wait_for(
        lambda: next(
            (e for e in server.events() if e["type"] == kind and e["message_id"] == message_id),
            None,
        ),
        f"a {kind} event for {message_id}",
    )


def delivered_copy(server: Server, message_id: str) -> email.message.EmailMessage:
    event_of(server, "delivered", message_id)
    raw = server.copy(message_id).read_bytes()
    return email.message_from_bytes(raw, policy=email.policy.default)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("subscription-server")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    api_key = "acme-" + random_secret()
    document = base_document(
        tmp / "data",
        {
            "acme": {
                "api_keys": [api_key],
                "tracking": {
                    "open_tracking": {"enable": False},
                    "subscription_tracking": {"enable": True},
                },
                "plugins": {"subscription_tracking": {"groups": GROUPS}},
            }
        },
    )
    document["server"]["http"] = {"host": "127.0.0.1", "port": port}
    document["server"]["tracking_base_url"] = base  # links in the mail reach this server
    config = tmp / "scaisend.yaml"
    config.write_text(yaml.safe_dump(document))
    with ScaisendServer("--config", str(config), port=port):
        yield Server(base, tmp / "data", api_key)


def landing_url(message: email.message.EmailMessage, base: str) -> str:
    html = message.get_body(("html",)).get_content()
    found = re.search(rf'<a href="({re.escape(base)}/t/u/[A-Za-z0-9_-]+)">Unsubscribe</a>', html)
    assert found, html
    return found.group(1)


def test_one_click_drops_the_next_send_and_resubscribing_restores_it(server: Server):
    # 1. The message carries both headers and the footer.
    first = server.send("reader@example.com", asm={"group_id": 1})
    message = delivered_copy(server, first)
    landing = landing_url(message, server.base)
    assert str(message["List-Unsubscribe"]) == f"<{landing}/one-click>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    text = message.get_body(("plain",)).get_content()
    assert text.rstrip().endswith(landing)

    # 2. A mail client's one-click POST, as multipart/form-data (RFC 8058's own example).
    response = httpx.post(f"{landing}/one-click", files={"List-Unsubscribe": (None, "One-Click")})
    assert response.status_code == 200
    assert response.request.headers["Content-Type"].startswith("multipart/form-data")
    unsubscribed = event_of(server, "group_unsubscribe", first)
    assert unsubscribed["recipient"] == "reader@example.com"
    assert unsubscribed["data"]["asm_group_id"] == 1
    listed = server.api("GET", "/v3/asm/groups/1/suppressions")
    assert listed.json() == ["reader@example.com"]

    # 3. The next send to that group is dropped; a send without the group still goes out.
    second = server.send("reader@example.com", asm={"group_id": 1})
    dropped = event_of(server, "dropped", second)
    assert dropped["data"]["reason"] == "Unsubscribed Address"
    assert dropped["data"]["suppression"] == "group_unsubscribe"
    assert not server.copy(second).exists()
    other = server.send("reader@example.com")
    delivered_copy(server, other)

    # 4. Resubscribing on the landing page restores delivery for that group.
    page = httpx.get(landing)
    assert page.status_code == 200
    assert 'data-action="resubscribe_group" data-group="1"' in page.text
    confirmed = httpx.post(landing, data={"action": "resubscribe_group", "group_id": "1"})
    assert confirmed.status_code == 200
    assert "You have been resubscribed to Weekly news." in confirmed.text
    event_of(server, "group_resubscribe", first)
    third = server.send("reader@example.com", asm={"group_id": 1})
    assert str(delivered_copy(server, third)["To"]) == "reader@example.com"
    assert not [e for e in server.events() if e["type"] == "dropped" and e["message_id"] == third]


def test_gets_never_change_state_through_real_http(server: Server):
    message_id = server.send("looker@example.com", asm={"group_id": 2})
    landing = landing_url(delivered_copy(server, message_id), server.base)
    for url in (landing, f"{landing}/one-click"):
        for _ in range(3):
            response = httpx.get(url)
            assert response.status_code == 200
            assert response.headers["X-Frame-Options"] == "DENY"
    assert server.api("GET", "/v3/asm/groups/2/suppressions").json() == []
    found = server.api("GET", "/v3/asm/suppressions/global/looker@example.com").json()
    assert found == {}


def _browser_or_skip() -> Any:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if sync_playwright is None or not CHROMIUM.exists():
        missing = "playwright" if sync_playwright is None else str(CHROMIUM)
        if os.environ.get("CI"):
            pytest.fail(f"{missing} is missing: .ci/run installs it")
        pytest.skip(f"{missing} is missing (apt-get install chromium; pip install playwright)")
    return sync_playwright


def test_a_browser_unsubscribes_and_resubscribes_on_the_landing_page(server: Server):
    sync_playwright = _browser_or_skip()
    message_id = server.send("browser@example.com", asm={"group_id": 1, "groups_to_display": [2]})
    landing = landing_url(delivered_copy(server, message_id), server.base)

    def group_list(group: int) -> list[str]:
        return list(server.api("GET", f"/v3/asm/groups/{group}/suppressions").json())

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(landing)
            assert page.title() == "Email preferences"
            assert "b***@example.com" in page.inner_text("body")
            offers = page.locator('li[data-group="2"]')
            assert offers.locator("strong").inner_text() == "Offers <& deals>"
            assert offers.locator(".state").inner_text() == "Subscribed"

            with page.expect_navigation():
                offers.locator('button[data-action="unsubscribe_group"]').click()
            assert page.locator("[role=status]").inner_text() == (
                "You have been unsubscribed from Offers <& deals>."
            )
            assert page.locator('li[data-group="2"] .state').inner_text() == "Unsubscribed"
            assert group_list(2) == ["browser@example.com"]
            assert group_list(1) == []

            with page.expect_navigation():
                page.locator('li[data-group="2"] button[data-action="resubscribe_group"]').click()
            assert page.locator('li[data-group="2"] .state').inner_text() == "Subscribed"
            assert group_list(2) == []
        finally:
            browser.close()
    assert event_of(server, "group_unsubscribe", message_id)["data"]["asm_group_id"] == 2
    assert event_of(server, "group_resubscribe", message_id)["data"]["asm_group_id"] == 2
