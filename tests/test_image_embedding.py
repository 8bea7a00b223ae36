"""Library images in outgoing mail: proxied through /i/{image_id}, or embedded inline by CID."""

from __future__ import annotations

import base64
import email
import email.policy
import io
import re
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from core.instrument import instrument
from core.markup import scan_tags
from core.pipeline import Document, Recipient
from core.runtime import EXTENSION, Runtime
from core.storage import EventRecord
from core.testing import Harness
from plugins.image_proxy.library import ImageLibrary, make_thumbnail
from tests.test_image_library import (  # noqa: F401 - database_url is a fixture
    auth,
    database_url,
    delivered,
    image_bytes,
    live_server,
    tenants,
)

pytestmark = pytest.mark.anyio

BASE = "https://track.example.test"
IMAGES_ONLY = {
    "open_tracking": {"enable": False},
    "click_tracking": {"enable": False},
    "ganalytics": {"enable": False},
    "subscription_tracking": {"enable": False},
    "image_proxy": {"embed_mode": "proxy"},
}
NO_PIXEL_OR_CLICKS = {
    "open_tracking": {"enable": False},
    "click_tracking": {"enable": False},
}


def send_body(html: str, recipients: list[str], mode: str | None = None) -> dict:
    body: dict = {
        "personalizations": [{"to": [{"email": address}]} for address in recipients],
        "from": {"email": "news@example.org"},
        "subject": "Pictures",
        "content": [
            {"type": "text/plain", "value": "Pictures inside"},
            {"type": "text/html", "value": html},
        ],
        "tracking_settings": dict(NO_PIXEL_OR_CLICKS),
    }
    if mode is not None:
        body["tracking_settings"]["image_proxy"] = {"embed_mode": mode}
    return body


def outbox(harness: Harness, message_id: str) -> list[EmailMessage]:
    files = sorted((harness.config.data_dir / "outbox").glob(f"{message_id}-*.eml"))
    return [
        email.message_from_bytes(path.read_bytes(), policy=email.policy.default)  # type: ignore[misc]
        for path in files
    ]


def html_of(message: EmailMessage) -> str:
    part = message.get_body(("html",))
    assert part is not None
    return str(part.get_content()).replace("\r\n", "\n")  # MIME lines end in CRLF


async def test_proxy_mode_rewrites_library_images_per_recipient_and_records_loads(
    tmp_path,
    database_url,  # noqa: F811
):
    harness = Harness(tmp_path, tenants=tenants(), database_url=database_url)
    logo, photo = image_bytes("PNG", seed=1), image_bytes("JPEG", seed=2)
    async with live_server(harness) as (http, app):
        key = auth(harness)
        first = (await http.post("/v3/images", files={"file": ("l.png", logo)}, headers=key)).json()
        second = (
            await http.post("/v3/images", files={"file": ("p.jpg", photo)}, headers=key)
        ).json()
        html = (
            "<html><body>\n"
            f"<img alt='Logo' src='scaisend-image:{first['id']}' width=64>\n"
            f'<IMG SRC="{second["url"]}" style="display:block">\n'
            f"<img src={first['url']} alt=again>\n"
            '<img src="https://cdn.example.com/not-ours.png">\n'
            "<img src='scaisend-image:img_doesnotexist000000000000'>\n"
            "</body></html>"
        )
        response = await http.post(
            "/v3/mail/send",
            json=send_body(html, ["ann@example.com", "bob@example.com"]),
            headers=key,
        )
        assert response.status_code == 202, response.text
        message_id = response.json()["message_id"]
        await delivered(app)
        messages = outbox(harness, message_id)
        assert len(messages) == 2

        proxied = re.compile(rf"{re.escape(BASE)}/i/(img_[A-Za-z0-9_-]+)\?t=([A-Za-z0-9_-]+)")
        tokens = []
        for message in messages:
            body = html_of(message)
            found = proxied.findall(body)
            assert [image_id for image_id, _ in found] == [first["id"], second["id"], first["id"]]
            assert len({token for _, token in found}) == 1  # one token per recipient
            tokens.append(found[0][1])
            # Only src values changed: everything else is the author's.
            assert proxied.sub("SRC", body) == (
                html.replace(f"scaisend-image:{first['id']}", "SRC")
                .replace(second["url"], "SRC")
                .replace(first["url"], "SRC")
            )
        assert tokens[0] != tokens[1]

        load = await http.get(f"/i/{second['id']}?t={tokens[1]}", headers={"User-Agent": "Mail"})
        assert load.status_code == 200
        assert load.content == photo
        assert load.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        assert load.headers["ETag"] == f'"{second["content_hash"]}"'
        # A forged token gets the image too, but records nothing; so does a HEAD.
        assert (await http.get(f"/i/{second['id']}?t={tokens[1][:-2]}xx")).content == photo
        assert (await http.head(f"/i/{first['id']}?t={tokens[0]}")).status_code == 200
        runtime = app.extensions[EXTENSION]
        assert runtime.bus.flush()
        with runtime.db.connection_context():
            opens = list(EventRecord.select().where(EventRecord.type == "open"))
    assert len(opens) == 1
    assert opens[0].message_id == message_id
    assert opens[0].recipient == "bob@example.com"
    assert opens[0].data["source"] == "image_proxy"
    assert opens[0].data["image_id"] == second["id"]
    assert opens[0].data["user_agent"] == "Mail"


async def test_an_image_token_of_another_tenant_records_nothing(tmp_path):
    harness = Harness(tmp_path, tenants=tenants())
    async with live_server(harness) as (http, app):
        image = (
            await http.post(
                "/v3/images", files={"file": ("a.png", image_bytes())}, headers=auth(harness)
            )
        ).json()
        runtime = app.extensions[EXTENSION]
        foreign = runtime.tokens.issue("globex", "m" * 32, 0)
        assert (await http.get(f"/i/{image['id']}?t={foreign}")).status_code == 200
        assert runtime.bus.flush()
        with runtime.db.connection_context():
            assert EventRecord.select().where(EventRecord.type == "open").count() == 0


async def test_cid_mode_embeds_each_image_once_beside_the_html(tmp_path):
    harness = Harness(tmp_path, tenants=tenants())
    logo, photo = image_bytes("GIF", seed=3), image_bytes("WEBP", seed=4)
    async with live_server(harness) as (http, app):
        key = auth(harness)
        first = (
            await http.post("/v3/images", files={"file": ("logo.gif", logo)}, headers=key)
        ).json()
        second = (
            await http.post("/v3/images", files={"file": ("photo.webp", photo)}, headers=key)
        ).json()
        html = (
            f'<p><img src="scaisend-image:{first["id"]}"> and <img src="{second["url"]}">'
            f"<img src='scaisend-image:{first['id']}'></p>"
        )
        response = await http.post(
            "/v3/mail/send",
            json=send_body(html, ["ann@example.com", "bob@example.com"], "cid"),
            headers=key,
        )
        assert response.status_code == 202, response.text
        await delivered(app)
        messages = outbox(harness, response.json()["message_id"])
        runtime = app.extensions[EXTENSION]
        assert runtime.bus.flush()
        with runtime.db.connection_context():
            assert EventRecord.select().where(EventRecord.type == "open").count() == 0

    assert len(messages) == 2  # one per personalization, each with the images
    for message in messages:
        _check_cid_message(message, logo, photo)


def _check_cid_message(message: EmailMessage, logo: bytes, photo: bytes) -> None:
    assert message.get_content_type() == "multipart/alternative"
    plain, related = message.iter_parts()
    assert plain.get_content_type() == "text/plain"
    assert related.get_content_type() == "multipart/related"
    html_part, *images = related.iter_parts()
    assert html_part.get_content_type() == "text/html"
    assert [part.get_content_type() for part in images] == ["image/gif", "image/webp"]
    assert [part.get_content_disposition() for part in images] == ["inline", "inline"]
    assert [part.get_filename() for part in images] == ["logo.gif", "photo.webp"]
    assert [part.get_content() for part in images] == [logo, photo]
    content_ids = [str(part["Content-ID"]).strip("<>") for part in images]
    body = str(html_part.get_content()).replace("\r\n", "\n")
    assert body == (
        f'<p><img src="cid:{content_ids[0]}"> and <img src="cid:{content_ids[1]}">'
        f"<img src='cid:{content_ids[0]}'></p>"
    )
    assert "/i/" not in body


async def test_cid_images_share_one_related_part_with_the_senders_inline_attachments(tmp_path):
    harness = Harness(tmp_path, tenants=tenants())
    logo = image_bytes("PNG", seed=5)
    attached = image_bytes("JPEG", seed=6)
    async with live_server(harness) as (http, app):
        key = auth(harness)
        image = (await http.post("/v3/images", files={"file": ("l.png", logo)}, headers=key)).json()
        body = send_body(
            f'<img src="scaisend-image:{image["id"]}"><img src="cid:banner">',
            ["a@example.com"],
            "cid",
        )
        body["content"] = body["content"][1:]  # HTML only
        body["attachments"] = [
            {
                "content": base64.b64encode(attached).decode(),
                "filename": "banner.jpg",
                "type": "image/jpeg",
                "disposition": "inline",
                "content_id": "banner",
            }
        ]
        response = await http.post("/v3/mail/send", json=body, headers=key)
        assert response.status_code == 202, response.text
        await delivered(app)
        (message,) = outbox(harness, response.json()["message_id"])
    assert message.get_content_type() == "multipart/related"
    html_part, *inline = message.iter_parts()
    assert html_part.get_content_type() == "text/html"
    assert str(inline[0]["Content-ID"]) == "<banner>"
    assert [part.get_content() for part in inline] == [attached, logo]
    assert all(part.get_content_disposition() == "inline" for part in inline)
    cid = str(inline[1]["Content-ID"]).strip("<>")
    assert html_of(message) == f'<img src="cid:{cid}"><img src="cid:banner">'


def test_inline_parts_need_an_html_body_and_valid_headers():
    staged = Document(text="plain only").stage("image_proxy")
    with pytest.raises(ValueError, match="HTML body"):
        staged.add_inline("a@b", "image/png", b"x", "a.png")
    document = Document(html="<p>")
    staged = document.stage("image_proxy")
    for content_id, content_type, filename, problem in (
        ("no-at-sign", "image/png", "a.png", "Content-ID"),
        ("a@b>\r\nX-Evil: 1", "image/png", "a.png", "Content-ID"),
        ("a@b", "image/png\r\nX-Evil: 1", "a.png", "content type"),
        ("a@b", "image/png", "a\r\n.png", "line break"),
    ):
        with pytest.raises(ValueError, match=problem):
            staged.add_inline(content_id, content_type, b"x", filename)
    staged.add_inline("img.1@scaisend", "image/png", b"x", "a.png")
    staged.commit()
    compiled = document.compile()
    assert compiled.html is not None
    assert [part.content_id for part in compiled.html.related] == ["img.1@scaisend"]


# --- byte preservation, for any HTML -------------------------------------------------------


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Iterator[tuple[Harness, Runtime, list[str]]]:
    """A harness and its runtime, whose library holds two images of tenant acme."""
    harness = Harness(tmp_path_factory.mktemp("images"), tenants=tenants())
    runtime = harness.open_runtime()
    images = ImageLibrary(runtime.db, harness.config.data_dir)
    ids = [
        images.add("acme", image_bytes(seed=n), filename=None, declared_type=None).id
        for n in range(2)
    ]
    yield harness, runtime, ids
    runtime.close()


_TEXT = st.text(st.characters(blacklist_characters="<\x00", codec="utf-8"), max_size=30)
_QUOTES = st.sampled_from(['"', "'", ""])


@st.composite
def html_with_images(draw, ids: list[str]) -> tuple[str, str]:
    """HTML with library and other image references, and what proxying must make of it."""
    source, expected = [], []
    for _ in range(draw(st.integers(0, 6))):
        text = draw(_TEXT)
        source.append(text)
        expected.append(text)
        quote = draw(_QUOTES)
        kind = draw(st.sampled_from(["scheme", "url", "other"]))
        image_id = draw(st.sampled_from(ids))
        src = {
            "scheme": f"scaisend-image:{image_id}",
            "url": f"{BASE}/i/{image_id}",
            "other": "https://cdn.example.com/x.png",
        }[kind]
        before = draw(st.sampled_from(["", ' alt="a b"', " width=10", " data-x='>'"]))
        after = draw(st.sampled_from(["", " /", ' style="x:y"', "\n"]))
        tag = draw(st.sampled_from(["img", "IMG", "Img"]))
        head = f"<{tag}{before} src={quote}"
        tail = f"{quote}{after}>"
        replaced = src if kind == "other" else f"{BASE}/i/{image_id}?t=TOKEN"
        source.append(head + src + tail)
        expected.append(head + replaced + tail)
    last = draw(_TEXT)
    return "".join([*source, last]), "".join([*expected, last])


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_proxying_changes_nothing_but_src_values(library, data):
    harness, runtime, ids = library
    source, expected = data.draw(html_with_images(ids))
    compiled, applied = instrument(
        harness.plugins,
        Document(html=source),
        tenant=harness.config.tenants["acme"],
        settings=IMAGES_ONLY,
        message_id="m",
        tracking_base_url=BASE,
        tokens=runtime.tokens,
    )
    assert "image_proxy" in applied
    assert compiled.html is not None
    assert compiled.html.stamp(Recipient(0, "r@example.test", "TOKEN")) == expected


CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "html"


def test_every_corpus_image_becomes_a_proxied_library_image_and_nothing_else_changes(library):
    """Each ``<img src>`` of every corpus file is pointed at a library image; proxying must
    replace exactly those values, whatever the surrounding markup."""
    harness, runtime, ids = library
    files = sorted(CORPUS.rglob("*.html"))
    assert len(files) >= 100, f"expected the HTML corpus at {CORPUS}"
    failures, images = [], 0
    for path in files:
        original = path.read_bytes().decode("utf-8", errors="replace")
        source, expected, cursor = [], [], 0
        for tag in scan_tags(original):
            src = tag.get("src")
            if tag.name != "img" or src is None or src.raw_value is None:
                continue
            image_id = ids[images % len(ids)]
            images += 1
            kept = original[cursor : src.value_start]
            source += [kept, f"scaisend-image:{image_id}"]
            expected += [kept, f"{BASE}/i/{image_id}?t=TOKEN"]
            cursor = src.value_end
        source.append(original[cursor:])
        expected.append(original[cursor:])
        compiled, _ = instrument(
            harness.plugins,
            Document(html="".join(source)),
            tenant=harness.config.tenants["acme"],
            settings=IMAGES_ONLY,
            message_id="m",
            tracking_base_url=BASE,
            tokens=runtime.tokens,
        )
        assert compiled.html is not None
        if compiled.html.stamp(Recipient(0, "r@example.test", "TOKEN")) != "".join(expected):
            failures.append(str(path.relative_to(CORPUS)))
    assert images > 100
    assert failures == []


def test_thumbnails_keep_the_format_and_fit_the_box():
    for fmt in ("PNG", "JPEG", "GIF", "WEBP"):
        preview = make_thumbnail(image_bytes(fmt, (900, 300)), 200)
        assert preview is not None
        with Image.open(io.BytesIO(preview)) as image:
            assert (image.format, image.size) == (fmt, (200, 67))


def test_a_thumbnail_is_upright_as_the_original_is_shown():
    image = Image.new("RGB", (400, 200), (200, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: shown rotated a quarter turn clockwise
    out = io.BytesIO()
    image.save(out, "JPEG", exif=exif)
    preview = make_thumbnail(out.getvalue(), 200)
    assert preview is not None
    with Image.open(io.BytesIO(preview)) as thumbnail:
        assert thumbnail.size == (100, 200)
