"""The image library API answers malformed ids and paging with a 4xx JSON error, never a 500.

Run on SQLite and on PostgreSQL, which refuses some strings (a NUL) SQLite compares quietly.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from werkzeug.datastructures import FileStorage

from core.testing import Harness, random_secret
from tests.conftest import postgres_url
from tests.postgres import fresh_database

pytestmark = pytest.mark.anyio

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    if request.param == "sqlite":
        yield None
    else:
        with fresh_database(postgres_url()) as url:
            yield url


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(out, "PNG")
    return out.getvalue()


CASES: list[tuple[str, str, int]] = [
    ("GET", "/v3/images/img_%00", 404),
    ("GET", "/v3/images/a%00b", 404),
    ("DELETE", "/v3/images/a%00b", 404),
    ("GET", "/v3/images/%ED%A0%80", 404),
    ("GET", "/v3/images/" + "x" * 5000, 404),
    ("GET", "/v3/images/..%2F..%2Fetc%2Fpasswd", 404),
    ("GET", "/v3/images?limit=%C2%B2", 400),
    ("GET", "/v3/images?limit=%D9%A1", 400),
    ("GET", "/v3/images?limit=-1", 400),
    ("GET", "/v3/images?limit=0", 400),
    ("GET", "/v3/images?limit=501", 400),
    ("GET", "/v3/images?offset=" + "9" * 5000, 400),
    ("GET", "/v3/images?offset=1e3", 400),
    ("GET", "/i/a%00b", 404),
    ("GET", "/i/img_%00?variant=thumbnail", 404),
    ("GET", "/i/x?variant=%00", 400),
]


async def test_malformed_ids_and_paging_get_a_4xx_json_error(tmp_path, database_url):
    tenants = {"acme": {"api_keys": ["acme-" + random_secret()]}}
    harness = Harness(tmp_path, tenants=tenants, database_url=database_url)
    headers = {"Authorization": f"Bearer {harness.api_key('acme')}"}
    async with harness.serving() as client:
        stream = FileStorage(io.BytesIO(png()), filename="logo.png")
        uploaded = await client.post("/v3/images", files={"file": stream}, headers=headers)
        assert uploaded.status_code == 201
        answers = []
        for method, path, _ in CASES:
            response = await client.open(path, method=method, headers=headers)
            answers.append((method, path[:60], response.status_code, await response.get_json()))
        listed = await client.get("/v3/images", headers=headers)
        assert [image["id"] for image in (await listed.get_json())["images"]] == [
            (await uploaded.get_json())["id"]
        ]
    expected = [(method, path[:60], status) for method, path, status in CASES]
    assert [answer[:3] for answer in answers] == expected
    assert all(set(answer[3]) == {"error"} for answer in answers)
    # The message says what is wrong in the API's terms, not the parser's.
    assert all("int()" not in answer[3]["error"] for answer in answers)


# Any code point, with NUL and lone surrogates drawn often (st.text() never yields surrogates).
ANY_TEXT = st.lists(
    # No "/": a path segment cannot hold one, and "//" is routing's to answer (a redirect).
    st.one_of(
        st.characters(exclude_characters="/"), st.sampled_from(["\x00", "\ud800", "..", "%"])
    ),
    min_size=1,
    max_size=40,
).map("".join)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(image_id=ANY_TEXT)
async def test_any_unknown_image_id_is_404_json(tmp_path, database_url, image_id):
    tenants = {"acme": {"api_keys": ["acme-" + random_secret()]}}
    harness = Harness(tmp_path, tenants=tenants, database_url=database_url)
    headers = {"Authorization": f"Bearer {harness.api_key('acme')}"}
    path = quote(image_id.encode("utf-8", "surrogatepass"), safe="")
    async with harness.serving() as client:
        answers = [
            await client.get(f"/v3/images/{path}", headers=headers),
            await client.delete(f"/v3/images/{path}", headers=headers),
            await client.get(f"/i/{path}"),
        ]
        for response in answers:
            assert response.status_code == 404
            assert set(await response.get_json()) == {"error"}
