"""The image library: /v3/images through the API, and /i/{image_id} through a real server."""

from __future__ import annotations

import asyncio
import hashlib
import io
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from hypercorn.asyncio import serve
from hypercorn.config import Config as HypercornConfig
from PIL import Image
from quart import Quart
from werkzeug.datastructures import FileStorage

from core.runtime import EXTENSION, Runtime
from core.testing import Harness, random_secret
from plugins.image_proxy.models import LibraryImage, Thumbnail
from tests.conftest import postgres_url
from tests.postgres import fresh_database

pytestmark = pytest.mark.anyio

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
CACHE_CONTROL = "public, max-age=31536000, immutable"


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (64, 48), seed: int = 0, **kw) -> bytes:
    image = Image.new("RGB", size, ((seed * 37) % 256, (seed * 91) % 256, 120))
    for x in range(0, size[0], 3):  # some detail, so encoders keep real data
        image.putpixel((x, x % size[1]), (x % 256, 0, seed % 256))
    out = io.BytesIO()
    image.save(out, fmt, **kw)
    return out.getvalue()


def tenants(**plugins: object) -> dict:
    return {
        "acme": {"api_keys": ["acme-" + random_secret()], "plugins": dict(plugins)},
        "globex": {"api_keys": ["globex-" + random_secret()]},
    }


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    if request.param == "sqlite":
        yield None
    else:
        with fresh_database(postgres_url()) as url:
            yield url


def auth(harness: Harness, tenant: str = "acme") -> dict[str, str]:
    return {"Authorization": f"Bearer {harness.api_key(tenant)}"}


async def upload(client, harness, data: bytes, filename="logo.png", mimetype=None, tenant="acme"):
    stream = FileStorage(io.BytesIO(data), filename=filename, content_type=mimetype)
    return await client.post("/v3/images", files={"file": stream}, headers=auth(harness, tenant))


def stored_files(harness: Harness) -> list[Path]:
    root = harness.config.data_dir / "images"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def rows(runtime: Runtime) -> list[LibraryImage]:
    with runtime.db.connection_context():
        return list(LibraryImage.select())


@asynccontextmanager
async def live_server(harness: Harness) -> AsyncIterator[tuple[httpx.AsyncClient, Quart]]:
    """The app served by Hypercorn on a loopback port, and an HTTP client for it."""
    app = harness.app()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    config = HypercornConfig()
    config.bind = [f"fd://{listener.detach()}"]  # Hypercorn owns the socket from here
    config.accesslog = None
    stop = asyncio.Event()
    server = asyncio.create_task(serve(app, config, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            while True:  # until the app has started serving
                try:
                    if (await http.get("/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    assert not server.done(), server.exception()
                    await asyncio.sleep(0.02)
            yield http, app
    finally:
        stop.set()
        await server


async def delivered(app: Quart) -> None:
    while app.background_tasks:
        await asyncio.gather(*app.background_tasks, return_exceptions=True)


# --- the library API -----------------------------------------------------------------------


async def test_upload_answers_what_was_stored_and_keeps_it_by_content(tmp_path, database_url):
    harness = Harness(tmp_path, tenants=tenants(), database_url=database_url)
    data = image_bytes("PNG", (64, 48))
    async with harness.serving() as client:
        response = await upload(client, harness, data)
        assert response.status_code == 201, await response.get_data()
        body = await response.get_json()
        digest = hashlib.sha256(data).hexdigest()
        assert body["url"] == f"https://track.example.test/i/{body['id']}"
        assert (body["content_type"], body["width"], body["height"]) == ("image/png", 64, 48)
        assert (body["content_hash"], body["size"], body["filename"]) == (
            digest,
            len(data),
            "logo.png",
        )
        kept = harness.config.data_dir / "images" / digest[:2] / digest
        assert kept.read_bytes() == data
        assert [p.name for p in stored_files(harness)] == [digest]

        again = await (await upload(client, harness, data, filename="copy.png")).get_json()
        assert again["id"] != body["id"]  # a new image, sharing the one stored copy
        assert [p.name for p in stored_files(harness)] == [digest]

        fetched = await client.get(f"/v3/images/{body['id']}", headers=auth(harness))
        assert (fetched.status_code, await fetched.get_json()) == (200, body)


@pytest.mark.parametrize(
    ("fmt", "content_type", "filename", "options"),
    [
        ("PNG", "image/png", "a.png", {}),
        ("JPEG", "image/jpeg", "a.jpg", {"progressive": True}),
        ("GIF", "image/gif", "a.gif", {}),
        ("WEBP", "image/webp", "a.webp", {}),
    ],
)
async def test_each_accepted_format_is_recognised_from_its_bytes(
    tmp_path, fmt, content_type, filename, options
):
    harness = Harness(tmp_path, tenants=tenants())
    data = image_bytes(fmt, (30, 20), **options)
    async with harness.serving() as client:
        named = await upload(client, harness, data, filename=filename)
        unnamed = await upload(client, harness, data, filename="upload", mimetype="")
    for response in (named, unnamed):
        assert response.status_code == 201
        body = await response.get_json()
        assert (body["content_type"], body["width"], body["height"]) == (content_type, 30, 20)


def _gif_with_script_comment() -> bytes:
    data = image_bytes("GIF", (8, 8))
    script = b"<script>alert(1)</script>"
    comment = b"\x21\xfe" + bytes([len(script)]) + script + b"\x00"
    return data[:-1] + comment + b"\x3b"


PNG = image_bytes("PNG", (40, 40))
JPEG = image_bytes("JPEG", (40, 40))
REFUSED = {
    "truncated PNG": (PNG[: len(PNG) - 20], "a.png", None, "truncated"),
    "truncated JPEG": (JPEG[: len(JPEG) // 2], "a.jpg", None, "truncated"),
    "truncated GIF": (image_bytes("GIF")[:-30], "a.gif", None, "truncated"),
    "PNG named .jpg": (PNG, "photo.jpg", None, "is PNG but is named"),
    "PNG sent as image/jpeg": (PNG, "photo", "image/jpeg", "is PNG but is labelled image/jpeg"),
    "JPEG named .html": (JPEG, "page.html", None, "is JPEG but is named"),
    "PNG then a ZIP": (
        PNG + b"PK\x03\x04" + b"\x00" * 26 + b"PK\x05\x06" + b"\x00" * 18,
        "a.png",
        None,
        "follow the end",
    ),
    "JPEG then HTML": (
        JPEG + b"<html><script>alert(1)</script></html>",
        "a.jpg",
        None,
        "follow the end",
    ),
    "GIF with a script": (_gif_with_script_comment(), "a.gif", None, "markup or script"),
    "SVG": (b'<svg xmlns="http://www.w3.org/2000/svg"/>', "a.svg", "image/svg+xml", "not a PNG"),
    "text": (b"just words", "a.png", None, "not a PNG, JPEG, GIF or WebP"),
    "empty": (b"", "a.png", None, "empty"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
async def test_refused_uploads_answer_400_and_store_nothing(tmp_path, case):
    data, filename, mimetype, reason = REFUSED[case]
    harness = Harness(tmp_path, tenants=tenants())
    async with harness.serving() as client:
        response = await upload(client, harness, data, filename=filename, mimetype=mimetype)
        assert response.status_code == 400
        body = await response.get_json()
        assert reason in body["error"], body
        assert rows(harness.runtime) == []
    assert stored_files(harness) == []


async def test_oversized_uploads_answer_413_by_default_and_by_configuration(tmp_path):
    harness = Harness(
        tmp_path,
        tenants={
            **tenants(),
            "small": {
                "api_keys": ["small-" + random_secret()],
                "plugins": {"image_proxy": {"max_upload_bytes": 2000}},
            },
        },
    )
    big = image_bytes("PNG", (300, 300), compress_level=0)
    assert len(big) > 2000
    async with harness.serving() as client:
        limited = await upload(client, harness, big, tenant="small")
        assert limited.status_code == 413
        assert "2000 bytes" in (await limited.get_json())["error"]
        assert (await upload(client, harness, big, tenant="acme")).status_code == 201
        five_mb = 5 * 1024 * 1024
        over_default = await upload(client, harness, PNG + b"\x00" * (five_mb + 1 - len(PNG)))
        assert over_default.status_code == 413
        assert str(five_mb) in (await over_default.get_json())["error"]
        assert [row.tenant for row in rows(harness.runtime)] == ["acme"]


async def test_upload_needs_a_file_and_a_valid_key(tmp_path):
    harness = Harness(tmp_path, tenants=tenants())
    async with harness.serving() as client:

        def form(field: str = "file") -> dict[str, FileStorage]:
            return {field: FileStorage(io.BytesIO(PNG), filename="a.png")}

        missing_key = await client.post("/v3/images", files=form())
        wrong_key = await client.post(
            "/v3/images", files=form(), headers={"Authorization": "Bearer " + random_secret()}
        )
        no_file = await client.post("/v3/images", files=form("other"), headers=auth(harness))
        json_body = await client.post("/v3/images", json={"file": "x"}, headers=auth(harness))
        listing = await client.get("/v3/images")
    assert [r.status_code for r in (missing_key, wrong_key, no_file, json_body, listing)] == [
        401,
        401,
        400,
        400,
        401,
    ]
    for response in (missing_key, wrong_key, no_file, json_body, listing):
        assert set(await response.get_json()) == {"error"}
    assert rows(harness.runtime) == []


async def test_a_tenant_never_sees_or_deletes_another_tenants_images(tmp_path, database_url):
    harness = Harness(tmp_path, tenants=tenants(), database_url=database_url)
    async with harness.serving() as client:
        acme = await (await upload(client, harness, PNG)).get_json()
        globex = await (await upload(client, harness, JPEG, "g.jpg", tenant="globex")).get_json()
        as_globex = auth(harness, "globex")
        assert (await client.get(f"/v3/images/{acme['id']}", headers=as_globex)).status_code == 404
        assert (
            await client.delete(f"/v3/images/{acme['id']}", headers=as_globex)
        ).status_code == 404
        listed = await (await client.get("/v3/images", headers=as_globex)).get_json()
        assert [image["id"] for image in listed["images"]] == [globex["id"]]
        assert listed["total"] == 1
        still = await client.get(f"/v3/images/{acme['id']}", headers=auth(harness))
        assert still.status_code == 200


async def test_listing_pages_through_every_image_newest_first(tmp_path, database_url):
    harness = Harness(tmp_path, tenants=tenants(), database_url=database_url)
    async with harness.serving() as client:
        ids = [
            (await (await upload(client, harness, image_bytes(seed=n))).get_json())["id"]
            for n in range(5)
        ]
        seen: list[str] = []
        offset: int | None = 0
        while offset is not None:
            page = await client.get(f"/v3/images?limit=2&offset={offset}", headers=auth(harness))
            body = await page.get_json()
            assert body["total"] == 5
            assert len(body["images"]) <= 2
            seen += [image["id"] for image in body["images"]]
            offset = body["next_offset"]
        assert sorted(seen) == sorted(ids)
        assert len(seen) == 5
        created = [
            (await (await client.get(f"/v3/images/{i}", headers=auth(harness))).get_json())[
                "created_at"
            ]
            for i in seen
        ]
        assert created == sorted(created, reverse=True)
        for bad in ("limit=-1", "limit=abc", "limit=501", "offset=x"):
            response = await client.get(f"/v3/images?{bad}", headers=auth(harness))
            assert response.status_code == 400, bad
            assert "error" in await response.get_json()


async def test_image_ids_are_random_and_not_sequential(tmp_path):
    harness = Harness(tmp_path, tenants=tenants())
    async with harness.serving() as client:
        ids = [(await (await upload(client, harness, PNG)).get_json())["id"] for _ in range(20)]
    assert len(set(ids)) == 20
    assert all(i.startswith("img_") and len(i) == 28 for i in ids)
    assert len({i[4:8] for i in ids}) > 10  # no shared prefix, as a counter would give


# --- /i/{image_id} through a real server ---------------------------------------------------


async def test_the_proxy_route_answers_with_the_documented_headers(tmp_path, database_url):
    harness = Harness(tmp_path, tenants=tenants(), database_url=database_url)
    data = image_bytes("JPEG", (640, 480))
    async with live_server(harness) as (http, app):
        created = await http.post(
            "/v3/images", files={"file": ("big.jpg", data)}, headers=auth(harness)
        )
        image = created.json()
        url = f"/i/{image['id']}"

        got = await http.get(url)
        assert got.status_code == 200
        assert got.content == data
        assert got.headers["Content-Type"] == "image/jpeg"
        assert got.headers["Content-Length"] == str(len(data))
        assert got.headers["Cache-Control"] == CACHE_CONTROL
        assert got.headers["ETag"] == f'"{image["content_hash"]}"'

        head = await http.head(url)
        assert head.status_code == 200
        assert head.content == b""
        for name in ("Content-Type", "Content-Length", "Cache-Control", "ETag"):
            assert head.headers[name] == got.headers[name], name

        for validator in (got.headers["ETag"], f'"other", W/{got.headers["ETag"]}', "*"):
            cached = await http.get(url, headers={"If-None-Match": validator})
            assert cached.status_code == 304, validator
            assert cached.content == b""
            assert cached.headers["ETag"] == got.headers["ETag"]
            assert cached.headers["Cache-Control"] == CACHE_CONTROL
        assert (await http.get(url, headers={"If-None-Match": '"other"'})).status_code == 200

        thumb = await http.get(f"{url}?variant=thumbnail")
        assert thumb.status_code == 200
        assert thumb.headers["Content-Type"] == "image/jpeg"
        assert thumb.headers["Content-Length"] == str(len(thumb.content))
        assert thumb.headers["Cache-Control"] == CACHE_CONTROL
        assert thumb.headers["ETag"] != got.headers["ETag"]
        with Image.open(io.BytesIO(thumb.content)) as preview:
            assert preview.size == (200, 150)
        again = await http.get(f"{url}?variant=thumbnail")
        assert (again.content, again.headers["ETag"]) == (thumb.content, thumb.headers["ETag"])
        thumb_head = await http.head(f"{url}?variant=thumbnail")
        assert thumb_head.headers["Content-Length"] == str(len(thumb.content))
        runtime = app.extensions[EXTENSION]
        with runtime.db.connection_context():
            assert Thumbnail.select().count() == 1  # made once, then kept

        assert (await http.get(f"{url}?variant=huge")).status_code == 400
        unknown = await http.get("/i/img_" + "A" * 24)
        assert unknown.status_code == 404
        assert unknown.json() == {"error": "no such image"}
        assert (await http.head("/i/img_" + "A" * 24)).status_code == 404


async def test_a_small_image_is_its_own_thumbnail(tmp_path):
    harness = Harness(tmp_path, tenants=tenants())
    data = image_bytes("GIF", (50, 40))
    async with live_server(harness) as (http, _app):
        image = (
            await http.post("/v3/images", files={"file": ("s.gif", data)}, headers=auth(harness))
        ).json()
        thumb = await http.get(f"/i/{image['id']}?variant=thumbnail")
    assert thumb.content == data
    assert thumb.headers["ETag"] == f'"{image["content_hash"]}"'


async def test_deleting_a_sent_image_leaves_410_and_an_unsent_one_404(tmp_path, database_url):
    harness = Harness(tmp_path, tenants=tenants(), database_url=database_url)
    async with live_server(harness) as (http, app):
        post = {"headers": auth(harness)}
        sent = (await http.post("/v3/images", files={"file": ("a.png", PNG)}, **post)).json()
        unsent = (await http.post("/v3/images", files={"file": ("b.jpg", JPEG)}, **post)).json()
        body = {
            "personalizations": [{"to": [{"email": "ann@example.com"}]}],
            "from": {"email": "news@example.org"},
            "subject": "Logo",
            "content": [{"type": "text/html", "value": f'<img src="scaisend-image:{sent["id"]}">'}],
        }
        assert (await http.post("/v3/mail/send", json=body, **post)).status_code == 202
        await delivered(app)
        await http.get(f"/i/{sent['id']}?variant=thumbnail")

        for image in (sent, unsent):
            deleted = await http.delete(f"/v3/images/{image['id']}", **post)
            assert deleted.status_code == 204
            assert (await http.delete(f"/v3/images/{image['id']}", **post)).status_code == 404
            assert (await http.get(f"/v3/images/{image['id']}", **post)).status_code == 404

        gone = await http.get(f"/i/{sent['id']}")
        assert (gone.status_code, gone.json()) == (410, {"error": "the image was deleted"})
        assert (await http.get(f"/i/{sent['id']}?variant=thumbnail")).status_code == 410
        assert (await http.head(f"/i/{sent['id']}")).status_code == 410
        assert (await http.get(f"/i/{unsent['id']}")).status_code == 404
        listed = (await http.get("/v3/images", **post)).json()
        assert listed["images"] == []
        assert listed["total"] == 0
    # The bytes (and the thumbnail) of deleted images are not kept.
    assert stored_files(harness) == []


async def test_deleting_one_of_two_images_with_equal_bytes_keeps_the_other(tmp_path):
    harness = Harness(tmp_path, tenants=tenants())
    async with live_server(harness) as (http, _app):
        first = (
            await http.post("/v3/images", files={"file": ("a.png", PNG)}, headers=auth(harness))
        ).json()
        other = (
            await http.post(
                "/v3/images", files={"file": ("b.png", PNG)}, headers=auth(harness, "globex")
            )
        ).json()
        await http.delete(f"/v3/images/{first['id']}", headers=auth(harness))
        assert (await http.get(f"/i/{other['id']}")).content == PNG
