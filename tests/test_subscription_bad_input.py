"""The group and suppression API answers malformed input with a 4xx JSON error, never a 500.

Every case runs on SQLite and on PostgreSQL: PostgreSQL refuses some strings SQLite keeps
(NUL), and both refuse strings that are not UTF-8 (a lone surrogate from a JSON escape).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.testing import Harness, random_secret
from tests.conftest import postgres_url
from tests.postgres import fresh_database

pytestmark = pytest.mark.anyio

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
NUL = "\u0000"
SURROGATE = "\ud800"


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    if request.param == "sqlite":
        yield None
    else:
        with fresh_database(postgres_url()) as url:
            yield url


def make_harness(tmp_path: Any, database_url: str | None = None) -> Harness:
    tenants = {"acme": {"api_keys": ["acme-" + random_secret()]}}
    return Harness(tmp_path, tenants=tenants, database_url=database_url)


def as_json(value: Any) -> bytes:
    # ensure_ascii writes a lone surrogate as the escape "\ud800", as a client's JSON would.
    return json.dumps(value).encode()


CASES: list[tuple[str, str, Any]] = [
    ("POST", "/v3/asm/groups", {"name": f"a{NUL}b"}),
    ("POST", "/v3/asm/groups", {"name": SURROGATE}),
    ("POST", "/v3/asm/groups", {"name": "ok", "description": f"d{NUL}"}),
    ("POST", "/v3/asm/groups", {"name": "ok", "description": SURROGATE}),
    ("POST", "/v3/asm/groups", {"name": 10**400}),
    ("POST", "/v3/asm/groups", [1, 2]),
    ("POST", "/v3/asm/groups", b"{not json"),
    ("POST", "/v3/asm/groups", b"[" * 100_000),
    ("POST", "/v3/asm/suppressions/global", b'{"recipient_emails": ' + b"[" * 100_000),
    ("DELETE", "/v3/suppression/bounces", b'{"emails": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"),
    ("PATCH", "/v3/asm/groups/1", {"name": NUL}),
    ("PATCH", "/v3/asm/groups/1", {"description": SURROGATE}),
    ("POST", "/v3/asm/suppressions/global", {"recipient_emails": [f"a{NUL}b@example.com"]}),
    ("POST", "/v3/asm/suppressions/global", {"recipient_emails": [f"{SURROGATE}@example.com"]}),
    ("POST", "/v3/asm/suppressions/global", {"recipient_emails": ["a\x01b@example.com"]}),
    ("POST", "/v3/asm/suppressions/global", {"recipient_emails": [1e308]}),
    ("POST", "/v3/asm/suppressions/global", {"recipient_emails": "a@example.com"}),
    ("POST", "/v3/asm/groups/1/suppressions", {"recipient_emails": [f"x{NUL}@example.com"]}),
    ("GET", "/v3/asm/suppressions/global/a%00b@example.com", None),
    ("DELETE", "/v3/asm/suppressions/global/a%00b@example.com", None),
    ("GET", "/v3/suppression/bounces/a%00b@example.com", None),
    ("DELETE", "/v3/suppression/spam_reports/a%00b@example.com", None),
    ("DELETE", "/v3/suppression/bounces", {"emails": [f"a{NUL}@example.com"]}),
    ("DELETE", "/v3/asm/groups/1/suppressions/a%00@example.com", None),
    ("GET", "/v3/asm/groups?limit=-1", None),
    ("GET", "/v3/asm/groups?limit=501", None),
    ("GET", "/v3/asm/groups?limit=%C2%B2", None),
    ("GET", "/v3/asm/suppressions/global?offset=" + "9" * 5000, None),
    ("GET", "/v3/suppression/bounces?limit=0", None),
    ("GET", "/v3/suppression/blocks", None),
    ("DELETE", "/v3/suppression/invalid_emails/a@example.com", None),
]


async def test_malformed_input_gets_a_4xx_json_error(tmp_path, database_url):
    harness = make_harness(tmp_path, database_url)
    headers = {"Authorization": f"Bearer {harness.api_key('acme')}"}
    async with harness.serving() as client:
        created = await client.post("/v3/asm/groups", json={"name": "News"}, headers=headers)
        assert created.status_code == 201
        answers = []
        for method, path, payload in CASES:
            data = payload if isinstance(payload, bytes) or payload is None else as_json(payload)
            response = await client.open(path, method=method, data=data, headers=headers)
            body = await response.get_json()
            answers.append((method, path, response.status_code, body))
    failures = [
        answer
        for answer in answers
        if not 400 <= answer[2] < 500 or not isinstance(answer[3], dict) or "error" not in answer[3]
    ]
    assert failures == []


# Any code point, with the ones databases refuse (NUL, lone surrogates) drawn often; built
# from a list because st.text() never yields surrogates.
ANY_TEXT = st.lists(
    st.one_of(st.characters(), st.sampled_from([NUL, SURROGATE, "\udfff", "\x7f"])),
    max_size=30,
).map("".join)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(name=ANY_TEXT, email=ANY_TEXT)
async def test_any_group_name_or_address_is_kept_or_refused_with_4xx(tmp_path, name, email):
    harness = make_harness(tmp_path)
    headers = {"Authorization": f"Bearer {harness.api_key('acme')}"}
    async with harness.serving() as client:
        group = await client.post("/v3/asm/groups", data=as_json({"name": name}), headers=headers)
        listed = await client.post(
            "/v3/asm/suppressions/global",
            data=as_json({"recipient_emails": [email + "@example.com"]}),
            headers=headers,
        )
    for response in (group, listed):
        assert response.status_code in (201, 400), await response.get_data(as_text=True)
        assert isinstance(await response.get_json(), dict)
    if group.status_code == 201:
        # JSON reads an escaped surrogate pair as the one character it stands for.
        meant = name.encode("utf-16", "surrogatepass").decode("utf-16")
        assert (await group.get_json())["name"] == meant.strip()


async def test_creating_a_group_after_the_highest_id_is_409_and_creates_nothing(
    tmp_path, database_url
):
    tenants = {
        "acme": {
            "api_keys": ["acme-" + random_secret()],
            "plugins": {
                "subscription_tracking": {"groups": [{"id": 2_000_000_000, "name": "Last"}]}
            },
        }
    }
    harness = Harness(tmp_path, tenants=tenants, database_url=database_url)
    headers = {"Authorization": f"Bearer {harness.api_key('acme')}"}
    async with harness.serving() as client:
        created = await client.post("/v3/asm/groups", json={"name": "One more"}, headers=headers)
        listed = await client.get("/v3/asm/groups", headers=headers)
        assert created.status_code == 409
        assert "error" in await created.get_json()
        assert [group["name"] for group in await listed.get_json()] == ["Last"]
