"""Subscription tracking: footer and headers, landing and one-click pages, send-time screening."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from types import SimpleNamespace
from urllib.parse import unquote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.config import ConfigError
from core.send.service import SendService
from core.storage.models import NO_GROUP, Message, Suppression
from core.testing import Harness, random_secret
from plugins.subscription.groups import Group
from plugins.subscription.pages import landing, mask
from plugins.subscription.subscribers import GroupState, Preferences
from tests.conftest import postgres_url
from tests.postgres import fresh_database

pytestmark = pytest.mark.anyio

BASE = "https://track.example.test"
TOKEN = r"[A-Za-z0-9_-]+"
TRACKING = {
    "open_tracking": {"enable": False},
    "click_tracking": {"enable": False},
    "subscription_tracking": {"enable": True},
}
GROUPS = [
    {"id": 1, "name": "Weekly <b>news</b>", "description": 'Our "digest" & <script>x</script>'},
    {"id": 2, "name": "Offers", "is_default": True},
]


def tenants(
    tracking: dict | None = None, plugin: dict | None = None, **more: dict
) -> dict[str, dict]:
    return {
        "acme": {
            "api_keys": ["acme-" + random_secret()],
            "tracking": tracking or TRACKING,
            "plugins": {
                "subscription_tracking": plugin
                if plugin is not None
                else {"unsubscribe_mailbox": "unsub@acme.example", "groups": GROUPS}
            },
        },
        "globex": {"api_keys": ["globex-" + random_secret()], "tracking": TRACKING},
        **more,
    }


def make_harness(tmp_path, database_url: str | None = None, **options) -> Harness:
    # Events are read back from the JSON-lines sink: what a user's own consumer would see.
    return Harness(
        tmp_path,
        tenants=tenants(**options),
        database_url=database_url,
        server={"sinks": [{"type": "jsonl"}]},
    )


def body(*addresses: str, html: bool = True, **extra) -> dict:
    content = [{"type": "text/plain", "value": "Hello there"}]
    if html:
        content.append(
            {
                "type": "text/html",
                "value": '<html><body><p>Hello <a href="https://shop.example/">shop</a></p>'
                "</body></html>",
            }
        )
    return {
        "personalizations": [{"to": [{"email": a} for a in addresses or ("ann@example.com",)]}],
        "from": {"email": "news@acme.example"},
        "subject": "Hello",
        "content": content,
        **extra,
    }


def auth(harness: Harness, tenant: str = "acme") -> dict[str, str]:
    return {"Authorization": f"Bearer {harness.api_key(tenant)}"}


async def send(client, harness: Harness, payload: dict, tenant: str = "acme") -> str:
    response = await client.post("/v3/mail/send", json=payload, headers=auth(harness, tenant))
    assert response.status_code == 202, await response.get_data(as_text=True)
    await harness.background_work_done()
    return str((await response.get_json())["message_id"])


def delivered(harness: Harness, message_id: str) -> dict[int, email.message.EmailMessage]:
    outbox = harness.config.data_dir / "outbox"
    return {
        int(path.stem.rsplit("-", 1)[1]): email.message_from_bytes(
            path.read_bytes(), policy=email.policy.default
        )
        for path in sorted(outbox.glob(f"{message_id}-*.eml"))
    }


def raw_copy(harness: Harness, message_id: str, number: int = 0) -> bytes:
    return (harness.config.data_dir / "outbox" / f"{message_id}-{number:06d}.eml").read_bytes()


def token_of(message: email.message.EmailMessage) -> str:
    found = re.search(rf"/t/u/({TOKEN})/one-click", str(message["List-Unsubscribe"]))
    assert found, message["List-Unsubscribe"]
    return found.group(1)


def events(harness: Harness, kind: str) -> list[SimpleNamespace]:
    assert harness.runtime.bus.flush()
    path = harness.config.data_dir / "events.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [
        SimpleNamespace(**record) for record in map(json.loads, lines) if record["type"] == kind
    ]


def suppressions(harness: Harness) -> set[tuple[str, str, str, int]]:
    with harness.runtime.db.connection_context():
        return {(s.tenant, s.kind, s.email, s.group_id) for s in Suppression.select()}


def multipart_one_click(boundary: str = "scaisendtest") -> tuple[bytes, dict[str, str]]:
    """The request RFC 8058 section 3.1 shows, byte for byte."""
    data = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="List-Unsubscribe"\r\n'
        "\r\n"
        "One-Click\r\n"
        f"--{boundary}--\r\n"
    ).encode()
    return data, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


URLENCODED = {"Content-Type": "application/x-www-form-urlencoded"}


async def sent_token(client, harness: Harness, **extra) -> tuple[str, str]:
    message_id = await send(client, harness, body("Ann.Reader@Example.com", **extra))
    return message_id, token_of(delivered(harness, message_id)[0])


# --- outgoing: footer and headers -----------------------------------------------------------


async def test_a_message_carries_the_footer_and_both_headers(tmp_path):
    harness = make_harness(tmp_path)
    async with harness.serving() as client:
        message_id = await send(client, harness, body("ann@example.com", "bob@example.com"))
        copies = delivered(harness, message_id)
    assert sorted(copies) == [0, 1]
    tokens = set()
    for number, message in copies.items():
        token = token_of(message)
        tokens.add(token)
        claims = harness.runtime.tokens.verify(token)
        assert claims is not None
        assert (claims.tenant, claims.message_id, claims.recipient) == ("acme", message_id, number)
        assert str(message["List-Unsubscribe"]) == (
            f"<{BASE}/t/u/{token}/one-click>, "
            f"<mailto:unsub@acme.example?subject=unsubscribe%20{token}>"
        )
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        html = message.get_body(("html",)).get_content()
        landing = f'<a href="{BASE}/t/u/{token}">Unsubscribe</a>'
        assert landing in html
        # The footer sits at the end of the body, the author's markup around it untouched.
        assert html.startswith('<html><body><p>Hello <a href="https://shop.example/">shop</a></p>')
        assert html.index(landing) < html.index("</body></html>")
        text = message.get_body(("plain",)).get_content()
        assert text.startswith("Hello there\r\n\r\n")
        assert text.rstrip().endswith(f"Unsubscribe: {BASE}/t/u/{token}")
    assert len(tokens) == 2


async def test_tenant_footers_fill_every_placeholder(tmp_path):
    tracking = {
        **TRACKING,
        "subscription_tracking": {
            "enable": True,
            "html": '<div id="f"><a href="<% %>">Leave</a> or <a href="<%%>">manage</a></div>',
            "text": "Leave: <% %>",
        },
    }
    harness = make_harness(tmp_path, tracking=tracking)
    async with harness.serving() as client:
        message_id = await send(client, harness, body())
        message = delivered(harness, message_id)[0]
    token = token_of(message)
    url = f"{BASE}/t/u/{token}"
    html = message.get_body(("html",)).get_content()
    assert (
        f'<div id="f"><a href="{url}">Leave</a> or <a href="{url}">manage</a></div></body>' in html
    )
    assert "<%" not in html
    assert message.get_body(("plain",)).get_content() == f"Hello there\r\n\r\nLeave: {url}\r\n"


async def test_a_substitution_tag_is_replaced_and_no_footer_added(tmp_path):
    harness = make_harness(tmp_path)
    payload = body()
    payload["content"] = [
        {"type": "text/plain", "value": "Bye: %unsub%"},
        {"type": "text/html", "value": '<html><body><a href="%unsub%">bye</a></body></html>'},
    ]
    payload["tracking_settings"] = {"subscription_tracking": {"substitution_tag": "%unsub%"}}
    async with harness.serving() as client:
        message_id = await send(client, harness, payload)
        message = delivered(harness, message_id)[0]
    url = f"{BASE}/t/u/{token_of(message)}"
    assert message.get_body(("html",)).get_content() == (
        f'<html><body><a href="{url}">bye</a></body></html>'
    )
    assert message.get_body(("plain",)).get_content() == f"Bye: {url}"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


async def test_the_footer_link_is_never_click_tracked(tmp_path):
    tracking = {**TRACKING, "click_tracking": {"enable": True}}
    harness = make_harness(tmp_path, tracking=tracking)
    async with harness.serving() as client:
        message_id = await send(client, harness, body())
        message = delivered(harness, message_id)[0]
    html = message.get_body(("html",)).get_content()
    assert f'href="{BASE}/t/c/' in html  # the author's link is tracked
    assert f'<a href="{BASE}/t/u/{token_of(message)}">Unsubscribe</a>' in html


async def test_without_subscription_tracking_nothing_is_added(tmp_path):
    harness = make_harness(tmp_path, tracking={**TRACKING, "subscription_tracking": {}})
    async with harness.serving() as client:
        message_id = await send(client, harness, body())
        message = delivered(harness, message_id)[0]
    assert message["List-Unsubscribe"] is None
    assert "/t/u/" not in raw_copy(harness, message_id).decode()


def header_section(raw: bytes) -> list[bytes]:
    return raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")


async def test_list_unsubscribe_is_folded_at_its_comma(tmp_path):
    harness = make_harness(tmp_path)
    async with harness.serving() as client:
        message_id = await send(client, harness, body())
        raw = raw_copy(harness, message_id)
    lines = header_section(raw)
    start = next(i for i, line in enumerate(lines) if line.startswith(b"List-Unsubscribe:"))
    field = [lines[start]]
    field += [line for line in lines[start + 1 :] if line[:1] == b" "][: len(lines)]
    # The two URIs each keep their angle brackets on one line; the fold is after the comma.
    assert field[0].endswith(b"/one-click>,")
    assert field[1].startswith(b" <mailto:unsub@acme.example?subject=unsubscribe%20")
    assert field[1].endswith(b">")
    assert b"".join(line.lstrip(b" ") for line in field).count(b"<") == 2


async def test_no_header_can_be_injected_from_request_values(tmp_path):
    harness = make_harness(tmp_path)
    payload = body()
    payload["tracking_settings"] = {
        "subscription_tracking": {
            "html": '<a href="<% %>">x</a>\r\nBcc: victim@example.com',
            "text": "\r\nX-Injected: yes\r\n<% %>",
        }
    }
    async with harness.serving() as client:
        message_id = await send(client, harness, payload)
        raw = raw_copy(harness, message_id)
    names = [line.split(b":", 1)[0] for line in header_section(raw) if line[:1] not in b" \t"]
    assert b"Bcc" not in names
    assert b"X-Injected" not in names
    assert names.count(b"List-Unsubscribe") == 1


def test_a_mailbox_that_could_break_the_header_is_refused_by_the_config(tmp_path):
    for mailbox in ["a@b.example>, <https://evil.example/", "a@b.example\r\nBcc: x@y", "no-at"]:
        with pytest.raises(ConfigError, match="unsubscribe_mailbox"):
            make_harness(tmp_path, plugin={"unsubscribe_mailbox": mailbox})


MAILBOX_LOCAL = st.text(
    alphabet=st.sampled_from("abcXYZ019.!#$%&'*+/=?^_`{|}~-"), min_size=1, max_size=30
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(local=MAILBOX_LOCAL, html=st.text(max_size=60), text=st.text(max_size=60))
def test_any_valid_mailbox_and_footer_stay_inside_their_fields(tmp_path_factory, local, html, text):
    """Whatever a tenant configures: one header each, the mailbox round-trips, bodies parse."""
    tmp = tmp_path_factory.mktemp("prop")
    tracking = {**TRACKING, "subscription_tracking": {"enable": True}}
    harness = make_harness(
        tmp, tracking=tracking, plugin={"unsubscribe_mailbox": f"{local}@x.example"}
    )
    runtime = harness.open_runtime()
    try:
        service = SendService(runtime)
        payload = body()
        payload["tracking_settings"] = {
            "subscription_tracking": {"html": html or None, "text": text or None}
        }
        prepared = service.prepare(harness.config.tenants["acme"], payload)
        raw = next(iter(service.outgoing(prepared))).data
    finally:
        runtime.close()
    lines = header_section(raw)
    names = [line.split(b":", 1)[0] for line in lines if line[:1] not in b" \t"]
    assert names.count(b"List-Unsubscribe") == 1
    assert names.count(b"List-Unsubscribe-Post") == 1
    assert all(len(line) <= 998 for line in lines)
    message = email.message_from_bytes(raw, policy=email.policy.default)
    value = str(message["List-Unsubscribe"])
    found = re.fullmatch(
        rf"<{re.escape(BASE)}/t/u/{TOKEN}/one-click>, "
        rf"<mailto:([^?<>]+)\?subject=unsubscribe%20{TOKEN}>",
        value,
    )
    assert found, value
    assert unquote(found.group(1)) == f"{local}@x.example"


# --- the landing page -----------------------------------------------------------------------


SECURITY = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def assert_secure_page(response) -> None:
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    for name, value in SECURITY.items():
        assert response.headers[name] == value
    policy = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy
    assert "frame-ancestors 'none'" in policy
    assert "script-src" not in policy


async def test_the_landing_page_shows_masked_address_and_escaped_groups(tmp_path):
    harness = make_harness(tmp_path)
    async with harness.serving() as client:
        _, token = await sent_token(client, harness, asm={"group_id": 1, "groups_to_display": [2]})
        response = await client.get(f"/t/u/{token}")
        page = await response.get_data(as_text=True)
    assert response.status_code == 200
    assert_secure_page(response)
    assert "A***@Example.com" in page
    assert "ann.reader" not in page.lower()
    assert "Weekly &lt;b&gt;news&lt;/b&gt;" in page
    assert "Our &quot;digest&quot; &amp; &lt;script&gt;x&lt;/script&gt;" in page
    assert "<script>" not in page
    assert 'data-action="unsubscribe_group" data-group="1"' in page
    assert 'data-action="unsubscribe_group" data-group="2"' in page
    assert 'data-action="unsubscribe_all"' in page
    assert events(harness, "unsubscribe") == []
    assert suppressions(harness) == set()


def test_masking_keeps_only_the_first_character_and_domain():
    assert mask("ann@example.com") == "a***@example.com"
    assert mask("x@y.example") == "x***@y.example"


async def test_landing_actions_change_state_once_and_record_events(tmp_path):
    harness = make_harness(tmp_path)
    async with harness.serving() as client:
        message_id, token = await sent_token(client, harness, asm={"group_id": 1})

        async def act(action: str, group: str | None = None):
            form = {"action": action, **({"group_id": group} if group is not None else {})}
            response = await client.post(f"/t/u/{token}", form=form)
            return response.status_code, await response.get_data(as_text=True), response

        for _ in range(2):  # the second time changes nothing
            status, page, response = await act("unsubscribe_group", "1")
            assert status == 200
            assert_secure_page(response)
            assert "You have been unsubscribed from Weekly &lt;b&gt;news&lt;/b&gt;." in page
            assert 'data-action="resubscribe_group" data-group="1"' in page
        assert suppressions(harness) == {("acme", "group_unsubscribe", "ann.reader@example.com", 1)}

        status, page, _ = await act("resubscribe_group", "1")
        assert status == 200
        assert "You have been resubscribed to" in page
        assert suppressions(harness) == set()

        status, page, _ = await act("unsubscribe_all")
        assert "You are unsubscribed from all emails." in page
        assert suppressions(harness) == {("acme", "unsubscribe", "ann.reader@example.com", 0)}

    (unsub,) = events(harness, "unsubscribe")
    (group_unsub,) = events(harness, "group_unsubscribe")
    (resub,) = events(harness, "group_resubscribe")
    for event in (unsub, group_unsub, resub):
        assert (event.tenant, event.message_id) == ("acme", message_id)
        assert event.recipient == "Ann.Reader@Example.com"
        assert event.data["source"] == "landing page"
    assert group_unsub.data["asm_group_id"] == 1
    assert resub.data["asm_group_id"] == 1


@pytest.mark.parametrize(
    ("form", "status"),
    [
        ({}, 400),
        ({"action": "delete_everything"}, 400),
        ({"action": "unsubscribe_group"}, 400),
        ({"action": "unsubscribe_group", "group_id": "abc"}, 400),
        ({"action": "unsubscribe_group", "group_id": "-1"}, 400),
        ({"action": "unsubscribe_group", "group_id": "99"}, 400),  # not the tenant's
        ({"action": "resubscribe_group", "group_id": "9" * 40}, 400),
        ({"action": "unsubscribe_group", "group_id": "\u00b2"}, 400),
        ({"action": "unsubscribe_group", "group_id": "\uff11"}, 400),
    ],
)
async def test_bad_landing_forms_are_refused_and_change_nothing(tmp_path, form, status):
    harness = make_harness(tmp_path)
    async with harness.serving() as client:
        _, token = await sent_token(client, harness)
        response = await client.post(f"/t/u/{token}", form=form)
        page = await response.get_data(as_text=True)
    assert response.status_code == status
    assert_secure_page(response)
    assert "Traceback" not in page
    assert suppressions(harness) == set()
    assert events(harness, "group_unsubscribe") + events(harness, "unsubscribe") == []


async def test_unknown_and_forged_tokens_get_404_pages(tmp_path):
    harness = make_harness(tmp_path)
    async with harness.serving() as client:
        _, token = await sent_token(client, harness)
        forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
        # A valid token for a message that was never recorded.
        unrecorded = harness.runtime.tokens.issue("acme", "f" * 32, 0)
        other_tenant = harness.runtime.tokens.issue("globex", "f" * 32, 0)
        for bad in (forged, "nonsense", unrecorded, other_tenant):
            for response in (
                await client.get(f"/t/u/{bad}"),
                await client.post(f"/t/u/{bad}", form={"action": "unsubscribe_all"}),
                await client.get(f"/t/u/{bad}/one-click"),
            ):
                assert response.status_code == 404
                assert_secure_page(response)
    assert suppressions(harness) == set()


async def test_a_token_never_reaches_another_tenants_message(tmp_path):
    """A token names its tenant: re-signing a message id under another tenant finds nothing."""
    harness = make_harness(tmp_path)
    async with harness.serving() as client:
        message_id, _ = await sent_token(client, harness)
        crossed = harness.runtime.tokens.issue("globex", message_id, 0)
        assert (await client.get(f"/t/u/{crossed}")).status_code == 404
        response = await client.post(
            f"/t/u/{crossed}/one-click", data="List-Unsubscribe=One-Click", headers=URLENCODED
        )
        assert response.status_code == 400
    assert suppressions(harness) == set()


async def test_a_tenant_landing_template_gets_the_form_at_its_placeholder(tmp_path):
    landing = (
        "<html><head><title>Acme</title></head><body><h1>Acme &amp; Co</h1>"
        "<script>alert(1)</script><main><% form %></main><footer>bye</footer></body></html>"
    )
    tracking = {**TRACKING, "subscription_tracking": {"enable": True, "landing_html": landing}}
    harness = make_harness(tmp_path, tracking=tracking)
    async with harness.serving() as client:
        _, token = await sent_token(client, harness)
        response = await client.get(f"/t/u/{token}")
        page = await response.get_data(as_text=True)
    assert page.startswith("<html><head><title>Acme</title></head><body><h1>Acme &amp; Co</h1>")
    main = page[page.index("<main>") : page.index("</main>")]
    assert "A***@Example.com" in main
    assert 'data-action="unsubscribe_all"' in main
    assert page.endswith("</main><footer>bye</footer></body></html>")
    # The tenant's own script is blocked by the policy: nothing is allowed to run.
    assert "script-src" not in response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]


async def test_a_tenant_template_without_placeholder_gets_the_form_before_body_end(tmp_path):
    landing = "<html><body><h1>Acme</h1></body></html>"
    tracking = {**TRACKING, "subscription_tracking": {"enable": True, "landing_html": landing}}
    harness = make_harness(tmp_path, tracking=tracking)
    async with harness.serving() as client:
        _, token = await sent_token(client, harness)
        page = await (await client.get(f"/t/u/{token}")).get_data(as_text=True)
    assert page.startswith('<html><body><h1>Acme</h1><div class="scaisend-preferences">')
    assert page.endswith("</div></body></html>")


# --- one-click (RFC 8058) -------------------------------------------------------------------


async def test_one_click_get_renders_a_page_and_changes_nothing(tmp_path):
    harness = make_harness(tmp_path)
    async with harness.serving() as client:
        _, token = await sent_token(client, harness)
        response = await client.get(f"/t/u/{token}/one-click")
        page = await response.get_data(as_text=True)
    assert response.status_code == 200
    assert_secure_page(response)
    assert 'name="List-Unsubscribe" value="One-Click"' in page
    assert suppressions(harness) == set()
    assert events(harness, "unsubscribe") == []


@pytest.mark.parametrize("encoding", ["urlencoded", "multipart"])
async def test_one_click_post_unsubscribes_globally_once(tmp_path, encoding):
    harness = make_harness(tmp_path)
    async with harness.serving() as client:
        message_id, token = await sent_token(client, harness)
        for _ in range(3):
            if encoding == "multipart":
                data, headers = multipart_one_click()
            else:
                data, headers = b"List-Unsubscribe=One-Click", URLENCODED
            response = await client.post(f"/t/u/{token}/one-click", data=data, headers=headers)
            assert response.status_code == 200
    assert suppressions(harness) == {("acme", "unsubscribe", "ann.reader@example.com", 0)}
    (event,) = events(harness, "unsubscribe")
    assert (event.message_id, event.data["source"]) == (message_id, "one-click")


async def test_one_click_on_a_group_message_leaves_only_that_group(tmp_path):
    harness = make_harness(tmp_path)
    async with harness.serving() as client:
        _, token = await sent_token(client, harness, asm={"group_id": 2})
        data, headers = multipart_one_click()
        response = await client.post(f"/t/u/{token}/one-click", data=data, headers=headers)
        assert response.status_code == 200
    assert suppressions(harness) == {("acme", "group_unsubscribe", "ann.reader@example.com", 2)}
    (event,) = events(harness, "group_unsubscribe")
    assert event.data["asm_group_id"] == 2
    assert events(harness, "unsubscribe") == []


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        (b"", "application/x-www-form-urlencoded"),
        (b"List-Unsubscribe=Yes", "application/x-www-form-urlencoded"),
        (b"list-unsubscribe=one-click", "application/x-www-form-urlencoded"),
        (b"List-Unsubscribe=One-Click", "text/plain"),
        (b'{"List-Unsubscribe": "One-Click"}', "application/json"),
        (b"List-Unsubscribe=One-Click", None),
        (b"--x\r\nbroken", "multipart/form-data; boundary=x"),
    ],
)
async def test_one_click_refuses_anything_but_the_rfc_8058_body(tmp_path, data, content_type):
    harness = make_harness(tmp_path)
    async with harness.serving() as client:
        _, token = await sent_token(client, harness)
        headers = {"Content-Type": content_type} if content_type else {}
        response = await client.post(f"/t/u/{token}/one-click", data=data, headers=headers)
        assert response.status_code == 400
        assert "error" in await response.get_json()
    assert suppressions(harness) == set()


async def test_one_click_with_a_bad_token_is_400(tmp_path):
    harness = make_harness(tmp_path)
    async with harness.serving() as client:
        _, token = await sent_token(client, harness)
        for bad in (
            token[:-3] + "xyz",
            "x" * 5000,
            harness.runtime.tokens.issue("acme", "0" * 32, 9),
        ):
            response = await client.post(
                f"/t/u/{bad}/one-click", data=b"List-Unsubscribe=One-Click", headers=URLENCODED
            )
            assert response.status_code == 400
            assert (await response.get_json())["error"]
    assert suppressions(harness) == set()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """``None`` for the harness's own SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield None
    else:
        with fresh_database(postgres_url()) as url:
            yield url


async def test_a_send_naming_a_group_id_no_group_can_have_still_unsubscribes(
    tmp_path, database_url
):
    # Beyond any group's id, and beyond PostgreSQL's integer: no group list can hold it. The
    # send API refuses such an id now; a message recorded before it did may still carry one.
    group_id = 3_000_000_000
    harness = make_harness(tmp_path, database_url=database_url)
    async with harness.serving() as client:
        message_id, token = await sent_token(client, harness, asm={"group_id": 1})
        db = harness.runtime.db
        with db.connection_context():
            record = Message.get_by_id(message_id)
            record.data = {**record.data, "asm": {"group_id": group_id}}
            record.save()
        page = await client.get(f"/t/u/{token}")
        assert page.status_code == 200
        assert f'data-group="{group_id}"' not in await page.get_data(as_text=True)
        chosen = await client.post(
            f"/t/u/{token}", form={"action": "unsubscribe_group", "group_id": str(group_id)}
        )
        assert chosen.status_code == 400
        one_click = await client.post(
            f"/t/u/{token}/one-click", data="List-Unsubscribe=One-Click", headers=URLENCODED
        )
        assert one_click.status_code == 200
        listed = suppressions(harness)
    assert listed == {("acme", "unsubscribe", "ann.reader@example.com", NO_GROUP)}


async def test_concurrent_unsubscribes_of_one_address_record_one(tmp_path, database_url):
    harness = make_harness(tmp_path, database_url=database_url)
    async with harness.serving() as client:
        # Two copies to one address (two sends): both tokens name the same person.
        _, first = await sent_token(client, harness)
        _, second = await sent_token(client, harness)

        async def one_click(token: str) -> int:
            data, headers = multipart_one_click()
            response = await client.post(f"/t/u/{token}/one-click", data=data, headers=headers)
            return response.status_code

        async def landing(token: str) -> int:
            response = await client.post(f"/t/u/{token}", form={"action": "unsubscribe_all"})
            return response.status_code

        statuses = await asyncio.gather(
            *(one_click(t) for t in (first, second) * 4), *(landing(t) for t in (first, second) * 4)
        )
        assert statuses == [200] * 16
        assert suppressions(harness) == {("acme", "unsubscribe", "ann.reader@example.com", 0)}
        assert len(events(harness, "unsubscribe")) == 1


# --- screening at send time -----------------------------------------------------------------


def delivered_to(harness: Harness, message_id: str, addresses: tuple[str, ...]) -> list[str]:
    """The addresses whose copies reached the outbox (copies are numbered in send order)."""
    return sorted(addresses[number] for number in delivered(harness, message_id))


def dropped(harness: Harness, message_id: str) -> dict[str, dict]:
    return {
        event.recipient: event.data
        for event in events(harness, "dropped")
        if event.message_id == message_id
    }


async def test_suppressed_recipients_are_dropped_with_a_reason(tmp_path):
    harness = make_harness(tmp_path)
    async with harness.serving() as client:
        store = harness.runtime.suppressions
        store.add("acme", "unsub@example.com", "unsubscribe")
        store.add("acme", "bounced@example.com", "bounce")
        store.add("acme", "spam@example.com", "spamreport")
        store.add("acme", "grouped@example.com", "group_unsubscribe", group_id=1)
        store.add("globex", "fine@example.com", "unsubscribe")  # another tenant's list
        everyone = ("Unsub@Example.com", "bounced@example.com", "spam@example.com")
        everyone += ("grouped@example.com", "fine@example.com")
        plain = await send(client, harness, body(*everyone))
        grouped = await send(client, harness, body(*everyone, asm={"group_id": 1}))
    assert delivered_to(harness, plain, everyone) == ["fine@example.com", "grouped@example.com"]
    assert delivered_to(harness, grouped, everyone) == ["fine@example.com"]
    assert dropped(harness, grouped) == {
        "Unsub@Example.com": {
            "recipient_number": 0,
            "reason": "Unsubscribed Address",
            "suppression": "unsubscribe",
        },
        "bounced@example.com": {
            "recipient_number": 1,
            "reason": "Bounced Address",
            "suppression": "bounce",
        },
        "spam@example.com": {
            "recipient_number": 2,
            "reason": "Spam Reporting Address",
            "suppression": "spamreport",
        },
        "grouped@example.com": {
            "recipient_number": 3,
            "reason": "Unsubscribed Address",
            "suppression": "group_unsubscribe",
            "asm_group_id": 1,
        },
    }
    delivered_events = {
        e.recipient for e in events(harness, "delivered") if e.message_id == grouped
    }
    assert delivered_events == {"fine@example.com"}


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ([], ["fine@example.com"]),
        (
            ["list"],
            ["bounced@example.com", "fine@example.com", "spam@example.com", "unsub@example.com"],
        ),
        (["unsubscribe"], ["fine@example.com", "unsub@example.com"]),
        (["bounce"], ["bounced@example.com", "fine@example.com"]),
        (["spam"], ["fine@example.com", "spam@example.com"]),
        (["spam", "bounce"], ["bounced@example.com", "fine@example.com", "spam@example.com"]),
    ],
)
async def test_bypass_flags_lift_exactly_their_lists(tmp_path, flags, expected):
    harness = make_harness(tmp_path)
    async with harness.serving() as client:
        store = harness.runtime.suppressions
        store.add("acme", "unsub@example.com", "unsubscribe")
        store.add("acme", "bounced@example.com", "bounce")
        store.add("acme", "spam@example.com", "spamreport")
        everyone = ("unsub@example.com", "bounced@example.com", "spam@example.com")
        mail_settings = {f"bypass_{flag}_management": {"enable": True} for flag in flags}
        payload = body(*everyone, "fine@example.com", mail_settings=mail_settings)
        message_id = await send(client, harness, payload)
    assert delivered_to(harness, message_id, (*everyone, "fine@example.com")) == expected
    assert sorted(dropped(harness, message_id)) == sorted(set(everyone) - set(expected))


# --- the management API ---------------------------------------------------------------------


async def test_the_api_needs_a_tenant_key(tmp_path):
    harness = make_harness(tmp_path)
    async with harness.serving() as client:
        for path in ("/v3/asm/groups", "/v3/asm/suppressions/global", "/v3/suppression/bounces"):
            for headers in ({}, {"Authorization": "Bearer wrong-key-" + random_secret()}):
                response = await client.get(path, headers=headers)
                assert response.status_code == 401
                assert "error" in await response.get_json()


async def test_groups_from_yaml_and_the_api(tmp_path):
    harness = make_harness(tmp_path)
    async with harness.serving() as client:
        acme, globex = auth(harness), auth(harness, "globex")
        listed = await client.get("/v3/asm/groups", headers=acme)
        assert await listed.get_json() == [
            {
                "id": 1,
                "name": GROUPS[0]["name"],
                "description": GROUPS[0]["description"],
                "is_default": False,
            },
            {"id": 2, "name": "Offers", "description": "", "is_default": True},
        ]
        assert listed.headers["X-Total-Count"] == "2"
        assert await (await client.get("/v3/asm/groups", headers=globex)).get_json() == []

        created = await client.post(
            "/v3/asm/groups",
            json={"name": "Events", "description": "Invitations", "is_default": True},
            headers=acme,
        )
        assert created.status_code == 201
        group = await created.get_json()
        assert group == {
            "id": 3,
            "name": "Events",
            "description": "Invitations",
            "is_default": True,
        }
        # Only one default per tenant.
        offers = await (await client.get("/v3/asm/groups/2", headers=acme)).get_json()
        assert offers["is_default"] is False

        patched = await client.patch("/v3/asm/groups/3", json={"name": "Events!"}, headers=acme)
        assert (await patched.get_json())["name"] == "Events!"
        # Another tenant can neither see nor change nor delete it.
        assert (await client.get("/v3/asm/groups/3", headers=globex)).status_code == 404
        assert (
            await client.patch("/v3/asm/groups/3", json={"name": "x"}, headers=globex)
        ).status_code == 404
        assert (await client.delete("/v3/asm/groups/3", headers=globex)).status_code == 404

        assert (await client.delete("/v3/asm/groups/3", headers=acme)).status_code == 204
        assert (await client.delete("/v3/asm/groups/3", headers=acme)).status_code == 404
        assert (await client.get("/v3/asm/groups/3", headers=acme)).status_code == 404


async def test_a_new_group_never_inherits_a_deleted_groups_unsubscribes(tmp_path):
    harness = make_harness(tmp_path, plugin={})
    async with harness.serving() as client:
        acme = auth(harness)
        first = await (
            await client.post("/v3/asm/groups", json={"name": "A"}, headers=acme)
        ).get_json()
        await client.post(
            f"/v3/asm/groups/{first['id']}/suppressions",
            json={"recipient_emails": ["gone@example.com"]},
            headers=acme,
        )
        assert (
            await client.delete(f"/v3/asm/groups/{first['id']}", headers=acme)
        ).status_code == 204
        second = await (
            await client.post("/v3/asm/groups", json={"name": "B"}, headers=acme)
        ).get_json()
        assert second["id"] != first["id"]
        listed = await client.get(f"/v3/asm/groups/{second['id']}/suppressions", headers=acme)
        assert await listed.get_json() == []
    # Deleting a group resubscribed nobody.
    assert suppressions(harness) == {("acme", "group_unsubscribe", "gone@example.com", first["id"])}


@pytest.mark.parametrize(
    ("method", "path", "payload", "status"),
    [
        ("POST", "/v3/asm/groups", {}, 400),
        ("POST", "/v3/asm/groups", {"name": ""}, 400),
        ("POST", "/v3/asm/groups", {"name": "x" * 101}, 400),
        ("POST", "/v3/asm/groups", {"name": "ok", "is_default": "yes"}, 400),
        ("POST", "/v3/asm/groups", {"name": "ok", "colour": "red"}, 400),
        ("POST", "/v3/asm/groups", ["not", "an", "object"], 400),
        ("PATCH", "/v3/asm/groups/1", {"description": 5}, 400),
        ("GET", "/v3/asm/groups/abc", None, 404),
        ("GET", "/v3/asm/groups/\u00b2", None, 404),
        ("GET", "/v3/asm/groups?limit=%C2%B2", None, 400),
        ("GET", "/v3/asm/groups/999", None, 404),
        ("GET", "/v3/asm/groups?limit=0", None, 400),
        ("GET", "/v3/asm/groups?limit=501", None, 400),
        ("GET", "/v3/asm/groups?offset=-1", None, 400),
        ("POST", "/v3/asm/groups/1/suppressions", {"recipient_emails": []}, 400),
        ("POST", "/v3/asm/groups/1/suppressions", {"recipient_emails": ["not an email"]}, 400),
        ("POST", "/v3/asm/groups/1/suppressions", {"recipient_emails": "a@b.example"}, 400),
        ("POST", "/v3/asm/groups/999/suppressions", {"recipient_emails": ["a@b.example"]}, 404),
        ("POST", "/v3/asm/suppressions/global", {"emails": ["a@b.example"]}, 400),
        ("DELETE", "/v3/asm/suppressions/global/nobody@example.com", None, 404),
        ("DELETE", "/v3/suppression/bounces", {"emails": "x"}, 400),
        ("GET", "/v3/suppression/unknown_list", None, 404),
    ],
)
async def test_bad_api_requests_get_json_errors_and_change_nothing(
    tmp_path, method, path, payload, status
):
    harness = make_harness(tmp_path)
    async with harness.serving() as client:
        options = {"json": payload} if payload is not None else {}
        response = await client.open(path, method=method, headers=auth(harness), **options)
        assert response.status_code == status
        assert isinstance((await response.get_json())["error"], str)
    assert suppressions(harness) == set()


async def test_group_and_global_suppressions_through_the_api(tmp_path):
    harness = make_harness(tmp_path)
    async with harness.serving() as client:
        acme, globex = auth(harness), auth(harness, "globex")
        added = await client.post(
            "/v3/asm/groups/1/suppressions",
            json={"recipient_emails": ["B@example.com", "a@example.com", "b@example.com"]},
            headers=acme,
        )
        assert added.status_code == 201
        assert await added.get_json() == {"recipient_emails": ["b@example.com", "a@example.com"]}
        listed = await client.get("/v3/asm/groups/1/suppressions", headers=acme)
        assert sorted(await listed.get_json()) == ["a@example.com", "b@example.com"]
        assert (
            await client.get("/v3/asm/groups/1/suppressions", headers=globex)
        ).status_code == 404
        deleted = await client.delete("/v3/asm/groups/1/suppressions/A@example.com", headers=acme)
        assert deleted.status_code == 204
        listed = await client.get("/v3/asm/groups/1/suppressions", headers=acme)
        assert await listed.get_json() == ["b@example.com"]

        added = await client.post(
            "/v3/asm/suppressions/global",
            json={"recipient_emails": ["c@example.com"]},
            headers=acme,
        )
        assert added.status_code == 201
        found = await client.get("/v3/asm/suppressions/global/C@example.com", headers=acme)
        assert await found.get_json() == {"recipient_email": "c@example.com"}
        absent = await client.get("/v3/asm/suppressions/global/c@example.com", headers=globex)
        assert await absent.get_json() == {}
        listed = await client.get("/v3/asm/suppressions/global", headers=acme)
        assert [e["email"] for e in await listed.get_json()] == ["c@example.com"]
        assert (
            await (await client.get("/v3/asm/suppressions/global", headers=globex)).get_json() == []
        )
        assert (
            await client.delete("/v3/asm/suppressions/global/c@example.com", headers=globex)
        ).status_code == 404
        assert (
            await client.delete("/v3/asm/suppressions/global/c@example.com", headers=acme)
        ).status_code == 204
    assert suppressions(harness) == {("acme", "group_unsubscribe", "b@example.com", 1)}


@pytest.mark.parametrize(("path", "kind"), [("bounces", "bounce"), ("spam_reports", "spamreport")])
async def test_bounce_and_spam_lists_page_and_delete(tmp_path, path, kind):
    harness = make_harness(tmp_path)
    async with harness.serving() as client:
        acme, globex = auth(harness), auth(harness, "globex")
        for n in range(7):
            harness.runtime.suppressions.add("acme", f"u{n}@example.com", kind, reason="550 no")
        harness.runtime.suppressions.add("globex", "other@example.com", kind)
        seen: list[str] = []
        for offset in (0, 3, 6):
            page = await client.get(f"/v3/suppression/{path}?limit=3&offset={offset}", headers=acme)
            assert page.headers["X-Total-Count"] == "7"
            entries = await page.get_json()
            assert all(e["reason"] == "550 no" and isinstance(e["created"], int) for e in entries)
            seen += [e["email"] for e in entries]
        assert sorted(seen) == [f"u{n}@example.com" for n in range(7)]
        one = await client.get(f"/v3/suppression/{path}/u1@example.com", headers=acme)
        assert (await one.get_json())["email"] == "u1@example.com"
        assert (
            await client.get(f"/v3/suppression/{path}/u1@example.com", headers=globex)
        ).status_code == 404
        assert (
            await client.delete(f"/v3/suppression/{path}/u1@example.com", headers=acme)
        ).status_code == 204
        gone = await client.delete(
            f"/v3/suppression/{path}",
            json={"emails": ["u2@example.com", "u3@example.com", "other@example.com"]},
            headers=acme,
        )
        assert gone.status_code == 204
        left = await client.get(f"/v3/suppression/{path}", headers=acme)
        assert left.headers["X-Total-Count"] == "4"
    assert ("globex", kind, "other@example.com", 0) in suppressions(harness)


async def test_concurrent_group_creations_get_distinct_ids(tmp_path, database_url):
    harness = make_harness(tmp_path, database_url=database_url, plugin={})
    async with harness.serving() as client:
        responses = await asyncio.gather(
            *(
                client.post("/v3/asm/groups", json={"name": f"g{n}"}, headers=auth(harness))
                for n in range(8)
            )
        )
        assert [r.status_code for r in responses] == [201] * 8
        ids = sorted([(await r.get_json())["id"] for r in responses])
        assert ids == list(range(1, 9))
        listed = await client.get("/v3/asm/groups", headers=auth(harness))
        assert sorted(g["name"] for g in await listed.get_json()) == [f"g{n}" for n in range(8)]


# --- pages escape whatever they show ---------------------------------------------------------


class _Structure(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _structure(page: str) -> _Structure:
    parser = _Structure()
    parser.feed(page)
    parser.close()
    return parser


@settings(max_examples=200)
@given(
    name=st.text(min_size=1, max_size=40),
    description=st.text(max_size=40),
    local=st.text(min_size=1, max_size=20).filter(lambda t: "@" not in t),
    unsubscribed=st.booleans(),
)
def test_pages_show_any_group_and_address_as_text_only(name, description, local, unsubscribed):
    prefs = Preferences(
        unsubscribed_all=False,
        groups=(GroupState(Group(7, name, description, False), unsubscribed),),
    )
    reference = Preferences(
        unsubscribed_all=False,
        groups=(GroupState(Group(7, "n", "d" if description else "", False), unsubscribed),),
    )
    page = landing(None, f"{local}@example.com", prefs, f"Done with {name}")
    plain = landing(None, "x@example.com", reference, "Done with n")
    # Exactly the tags of a page with harmless values: nothing shown became markup.
    assert _structure(page).tags == _structure(plain).tags
    shown = "".join(_structure(page).text)
    assert name in shown.replace("\r\n", "\n").replace("\r", "\n") or "\r" in name
    assert f"{local[:1]}***@example.com" in shown or "\r" in local[:1]
