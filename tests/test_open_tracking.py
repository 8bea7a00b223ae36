"""Open tracking: the pixel in outgoing HTML, and the /t/o/{token}.gif route."""

from __future__ import annotations

import email
import email.policy
import json
import os
import re
import subprocess
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from core.instrument import instrument
from core.pipeline import Document, Recipient
from core.storage import EventRecord, connect_database
from core.testing import Harness
from plugins.open_tracking import pixel_tag
from plugins.open_tracking.routes import PIXEL
from tests.serving import ScaisendServer, scaisend_executable, serve_environment, wait_for

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "html"
CORPUS_FILES = sorted(CORPUS.rglob("*.html"))
OPEN_ONLY = {
    "open_tracking": {"enable": True, "substitution_tag": None},
    "click_tracking": {"enable": False},
    "ganalytics": {"enable": False},
    "subscription_tracking": {"enable": False},
    "image_proxy": {"embed_mode": "proxy"},
}
PIXEL_URL = re.compile(r'<img src="(https://track\.example\.test/t/o/([A-Za-z0-9_-]+)\.gif)"')


def instrument_html(harness: Harness, html: str, settings=OPEN_ONLY, token: str = "TOKEN") -> str:
    compiled, _ = instrument(
        harness.plugins,
        Document(html=html),
        tenant=harness.config.tenants["acme"],
        settings=settings,
        message_id="m",
        tracking_base_url=harness.config.tracking_base_url,
        tokens=None,  # type: ignore[arg-type]
    )
    assert compiled.html is not None
    return compiled.html.stamp(Recipient(0, "r@example.test", token))


@pytest.fixture(scope="module")
def harness(tmp_path_factory) -> Harness:
    return Harness(tmp_path_factory.mktemp("open"))


def test_the_corpus_is_there():
    assert len(CORPUS_FILES) >= 100, f"expected the HTML corpus at {CORPUS}"


@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_corpus_output_differs_only_by_the_pixel(harness, path):
    source = path.read_bytes().decode("utf-8")
    output = instrument_html(harness, source)
    pixel = pixel_tag("https://track.example.test/t/o/TOKEN.gif")
    ends = [m.start() for m in re.finditer(r"</body\s*>", source, re.IGNORECASE)]
    at = ends[-1] if ends else len(source)
    assert output == source[:at] + pixel + source[at:]


def test_pixel_is_appended_without_a_body_tag(harness):
    assert instrument_html(harness, "<p>hi</p>").startswith("<p>hi</p><img ")


def test_pixel_goes_before_the_last_closing_body(harness):
    html = "<html><body><!-- </body> in a comment --><p>x</p></BODY ></html>"
    output = instrument_html(harness, html)
    assert output.index("<img ") == html.index("</BODY >")


@pytest.mark.parametrize(
    "html",
    [
        "<body><p>x</p></body>" + "<p>trailing</p>" * 1000,  # far from the end
        "<body>" + "x" * 5000 + "</body>" + "y" * 4093,  # straddles where the tail begins
        "<body>" + "x" * 5000 + "</body></body >" + "y" * 4090,  # two, the last one counts
    ],
    ids=["far-from-the-end", "straddling-the-tail", "last-of-two"],
)
def test_pixel_goes_before_the_last_closing_body_wherever_it_is(harness, html):
    last = [m.start() for m in re.finditer(r"</body\s*>", html, re.IGNORECASE)][-1]
    output = instrument_html(harness, html)
    assert output.index("<img ") == last
    assert output.replace(output[last : output.index(">", last) + 1], "", 1) == html


def test_substitution_tag_places_the_pixel_at_every_occurrence(harness):
    settings = {**OPEN_ONLY, "open_tracking": {"enable": True, "substitution_tag": "%open%"}}
    output = instrument_html(harness, "<body>%open%<p>x</p>%open%</body>", settings)
    pixel = pixel_tag("https://track.example.test/t/o/TOKEN.gif")
    assert output == f"<body>{pixel}<p>x</p>{pixel}</body>"


def test_the_pixel_is_one_by_one_with_empty_alt_and_no_border():
    tag = pixel_tag("https://t.example/t/o/x.gif")
    for attribute in ('width="1"', 'height="1"', 'alt=""', 'border="0"'):
        assert attribute in tag


def test_text_only_message_gets_no_pixel(harness):
    compiled, _ = instrument(
        harness.plugins,
        Document(text="Hello, plain text"),
        tenant=harness.config.tenants["acme"],
        settings=OPEN_ONLY,
        message_id="m",
        tracking_base_url=harness.config.tracking_base_url,
        tokens=None,  # type: ignore[arg-type]
    )
    assert compiled.text.stamp(Recipient(0, "r@x.test", "t")) == "Hello, plain text"
    assert compiled.html is None


def test_the_gif_is_a_42_byte_transparent_pixel():
    assert len(PIXEL) == 42
    assert PIXEL.startswith(b"GIF89a\x01\x00\x01\x00")
    assert PIXEL.endswith(b";")


@pytest.mark.anyio
async def test_valid_invalid_and_garbage_tokens_get_identical_answers(tmp_path):
    harness = Harness(tmp_path)
    async with harness.serving() as client:
        runtime = harness.runtime
        valid = runtime.tokens.issue("acme", "f" * 32, 3)
        answers = []
        for token in (
            valid,
            valid[:-1] + ("A" if valid[-1] != "A" else "B"),
            "garbage",
            "%00%ff",
            "x" * 1000,
        ):
            response = await client.get(f"/t/o/{token}.gif", headers={"User-Agent": "Mail/1"})
            headers = {
                k.lower(): v
                for k, v in response.headers.items()
                if k.lower() not in {"date", "x-request-id"}
            }
            answers.append((response.status_code, headers, await response.get_data()))
        assert all(answer == answers[0] for answer in answers)
        status, headers, body = answers[0]
        assert status == 200
        assert body == PIXEL
        assert headers["content-type"] == "image/gif"
        assert headers["cache-control"] == "private, no-cache, no-store, must-revalidate"
        assert headers["pragma"] == "no-cache"
        assert runtime.bus.flush()
    opens = list(EventRecord.select().where(EventRecord.type == "open"))
    assert len(opens) == 1
    assert (opens[0].tenant, opens[0].message_id) == ("acme", "f" * 32)
    assert opens[0].data["recipient_number"] == 3
    assert opens[0].data["user_agent"] == "Mail/1"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("peer", "forwarded", "trusted", "expected"),
    [
        ("203.0.113.9", "198.51.100.1", [], "203.0.113.9"),
        ("203.0.113.9", "198.51.100.1", ["10.0.0.0/8"], "203.0.113.9"),
        ("10.1.2.3", "198.51.100.1", ["10.0.0.0/8"], "198.51.100.1"),
        ("10.1.2.3", "6.6.6.6, 198.51.100.1, 10.9.9.9", ["10.0.0.0/8"], "198.51.100.1"),
        ("10.1.2.3", "not-an-ip", ["10.0.0.0/8"], "10.1.2.3"),
    ],
)
async def test_x_forwarded_for_is_believed_only_from_trusted_proxies(
    tmp_path, peer, forwarded, trusted, expected
):
    harness = Harness(tmp_path, server={"trusted_proxies": trusted})
    async with harness.serving() as client:
        token = harness.runtime.tokens.issue("acme", "a" * 32, 0)
        await client.get(
            f"/t/o/{token}.gif",
            headers={"X-Forwarded-For": forwarded},
            scope_base={"client": (peer, 40000)},
        )
        assert harness.runtime.bus.flush()
    (event,) = EventRecord.select().where(EventRecord.type == "open")
    assert event.data["ip"] == expected


# --- end to end, from the README's server command ----------------------------------------


def test_readme_server_sends_and_records_an_open(tmp_path):
    with ScaisendServer(cwd=tmp_path) as server:
        base = server.base
        key = subprocess.run(
            [scaisend_executable(), "api-key"],
            cwd=tmp_path,
            env=serve_environment(),
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        body = {
            "personalizations": [
                {"to": [{"email": "ann@example.com"}, {"email": "bob@example.com"}]}
            ],
            "from": {"email": "news@example.org"},
            "subject": "Weekly",
            "content": [{"type": "text/html", "value": "<html><body><p>News</p></body></html>"}],
        }
        response = httpx.post(
            f"{base}/v3/mail/send", json=body, headers={"Authorization": f"Bearer {key}"}
        )
        assert response.status_code == 202, response.text
        message_id = response.json()["message_id"]
        outbox = tmp_path / "scaisend-data" / "outbox"
        files = wait_for(
            lambda: (
                sorted(outbox.glob(f"{message_id}-*.eml"))
                if len(list(outbox.glob(f"{message_id}-*.eml"))) == 2
                else None
            ),
            "two .eml files",
        )
        urls = []
        for path in files:
            message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            html = message.get_body(("html",)).get_content()
            found = re.search(rf'<img src="({re.escape(base)}/t/o/[A-Za-z0-9_-]+\.gif)"', html)
            assert found, html
            urls.append(found.group(1))
        assert urls[0] != urls[1]
        pixel = httpx.get(urls[0], headers={"User-Agent": "Thunderbird"})
        assert (pixel.status_code, pixel.content) == (200, PIXEL)
    data_dir = tmp_path / "scaisend-data"
    connect_database(f"sqlite:///{data_dir / 'scaisend.db'}")
    opens = list(EventRecord.select().where(EventRecord.type == "open"))
    assert [(e.message_id, e.data["recipient_number"]) for e in opens] == [(message_id, 0)]
    lines = [json.loads(line) for line in (data_dir / "events.jsonl").read_text().splitlines()]
    assert [(e["type"], e["message_id"]) for e in lines if e["type"] == "open"] == [
        ("open", message_id)
    ]


@pytest.mark.anyio
async def test_a_full_disk_costs_the_event_never_the_pixel_or_the_redirect(tmp_path, capfd):
    """When the journal cannot be written (here: every write fails as on a full disk), the
    recipient still gets the pixel and the redirect, and the operator sees why."""
    harness = Harness(tmp_path)
    async with harness.serving() as client:
        runtime = harness.runtime
        token = runtime.tokens.issue("acme", "f" * 32, 0)
        target = "https://example.com/offer"
        binding = runtime.tokens.bind("f" * 32, target)
        journal = runtime.bus.journal
        kept = os.dup(journal._fd)
        full = os.open("/dev/full", os.O_WRONLY)
        os.dup2(full, journal._fd)
        try:
            pixel = await client.get(f"/t/o/{token}.gif")
            click = await client.get(f"/t/c/{token}?u={quote(target, safe='')}&s={binding}")
        finally:
            os.dup2(kept, journal._fd)
            os.close(kept)
            os.close(full)
    assert pixel.status_code == 200
    assert await pixel.get_data() == PIXEL
    assert click.status_code == 302
    assert click.headers["Location"] == target
    logged = capfd.readouterr()
    failures = [
        json.loads(line)
        for line in (logged.out + logged.err).splitlines()
        if '"hit.not_recorded"' in line
    ]
    assert sorted(failure["kind"] for failure in failures) == ["click", "open"]
    assert all("No space left" in failure["error"] for failure in failures)
