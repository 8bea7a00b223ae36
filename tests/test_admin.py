"""The admin API: a tenant's stored tracking overrides behind a JWT for that tenant."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import email
import email.policy
import hashlib
import hmac
import json
import re
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
import yaml
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core import Feature, InstrumentContext, StagedDocument, hookimpl
from core.auth import ADMIN_AUDIENCE, AuthError, mint_admin_token, verify_admin_token
from core.cli import cli
from core.config import AdminJwt
from core.testing import Harness, random_secret
from tests.conftest import postgres_url
from tests.postgres import fresh_database

pytestmark = pytest.mark.anyio

PATH = "/api/admin/tenants/{}/tracking"
SPEC_DEFAULTS = {
    "open_tracking_enabled": True,
    "click_tracking_enabled": True,
    "click_tracking_enable_text": False,
    "subscription_tracking_enabled": False,
    "ganalytics_enabled": False,
    "image_embed_mode": "proxy",
}
PIXEL = re.compile(r'<img src="https://track\.example\.test/t/o/[A-Za-z0-9_-]+\.gif"')
MINUTES = dt.timedelta(minutes=5)


def tenants(**tracking: dict) -> dict:
    return {
        name: {"api_keys": [f"{name}-" + random_secret()], "tracking": tracking.get(name, {})}
        for name in ("acme", "beta")
    }


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    if request.param == "sqlite":
        yield None  # the harness's default: SQLite in its data directory
    else:
        with fresh_database(postgres_url()) as url:
            yield url


def rsa_pair() -> tuple[str, str]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public_pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private_pem, public_pem


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def claims(tenant: str = "acme", **extra: object) -> dict:
    now = int(dt.datetime.now(dt.UTC).timestamp())
    return {
        "iss": "scaisend",
        "aud": ADMIN_AUDIENCE,
        "sub": "tester",
        "tenant": tenant,
        "iat": now,
        "exp": now + 300,
        **extra,
    }


def hand_made(header: dict, payload: dict, sign: bytes | None = None) -> str:
    """A JWT assembled by hand, for the shapes a library refuses to produce."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = hmac.digest(sign, signing_input.encode(), hashlib.sha256) if sign else b""
    return f"{signing_input}.{b64(signature)}"


async def test_get_shows_the_spec_defaults(tmp_path):
    harness = Harness(tmp_path, tenants=tenants())
    async with harness.serving() as client:
        response = await client.get(
            PATH.format("acme"), headers=bearer(harness.admin_token("acme"))
        )
        assert response.status_code == 200
        body = await response.get_json()
    assert {name: body[name] for name in SPEC_DEFAULTS} == SPEC_DEFAULTS
    assert body["subscription_tracking_html"] is None


async def test_put_is_additive_and_answers_the_effective_settings(tmp_path):
    harness = Harness(tmp_path, tenants=tenants())
    headers = bearer(harness.admin_token("acme"))
    async with harness.serving() as client:
        first = await client.put(
            PATH.format("acme"), headers=headers, json={"click_tracking_enabled": False}
        )
        assert first.status_code == 200
        assert (await first.get_json())["click_tracking_enabled"] is False
        html = '<p><a href="<% %>">Manage</a></p>'
        second = await client.put(
            PATH.format("acme"),
            headers=headers,
            json={
                "image_embed_mode": "cid",
                "subscription_tracking_enabled": True,
                "subscription_tracking_html": html,
            },
        )
        assert second.status_code == 200
        after_second = await second.get_json()
        got = await (await client.get(PATH.format("acme"), headers=headers)).get_json()
        beta = await (
            await client.get(PATH.format("beta"), headers=bearer(harness.admin_token("beta")))
        ).get_json()
    assert got == after_second
    expected = {
        **SPEC_DEFAULTS,
        "click_tracking_enabled": False,  # kept from the first PUT
        "image_embed_mode": "cid",
        "subscription_tracking_enabled": True,
    }
    assert {name: got[name] for name in SPEC_DEFAULTS} == expected
    assert got["subscription_tracking_html"] == html
    assert {name: beta[name] for name in SPEC_DEFAULTS} == SPEC_DEFAULTS  # acme's only


async def test_concurrent_puts_keep_every_field(tmp_path):
    harness = Harness(tmp_path, tenants=tenants())
    headers = bearer(harness.admin_token("acme"))
    fields = {
        "open_tracking_enabled": False,
        "click_tracking_enabled": False,
        "click_tracking_enable_text": True,
        "ganalytics_enabled": True,
        "ganalytics_utm_source": "newsletter",
        "image_embed_mode": "cid",
    }
    async with harness.serving() as client:
        answers = await asyncio.gather(
            *(
                client.put(PATH.format("acme"), headers=headers, json={name: value})
                for name, value in fields.items()
            )
        )
        assert [answer.status_code for answer in answers] == [200] * len(fields)
        got = await (await client.get(PATH.format("acme"), headers=headers)).get_json()
    assert {name: got[name] for name in fields} == fields


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"click_tracking_enabled": "yes"}, "click_tracking_enabled"),
        ({"image_embed_mode": "inline"}, "image_embed_mode"),
        ({"open_tracking_enabled": False, "no_such_setting": 1}, "no_such_setting"),
        ({"open_tracking_enabled": False, "ganalytics_utm_source": 7}, "ganalytics_utm_source"),
        ({"subscription_tracking_html": "x" * 100_001}, "subscription_tracking_html"),
    ],
)
async def test_invalid_values_are_400_naming_the_field_and_store_nothing(tmp_path, body, field):
    harness = Harness(tmp_path, tenants=tenants())
    headers = bearer(harness.admin_token("acme"))
    async with harness.serving() as client:
        response = await client.put(PATH.format("acme"), headers=headers, json=body)
        assert response.status_code == 400
        error = await response.get_json()
        assert error["field"] == field
        assert error["error"].startswith(f"{field}: ")
        got = await (await client.get(PATH.format("acme"), headers=headers)).get_json()
    assert {name: got[name] for name in SPEC_DEFAULTS} == SPEC_DEFAULTS


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[1, 2]",
        b'"text"',
        b"",
        b'{"a": ',
        b"[" * 100_000,  # deeper than the parser recurses
        b'{"open_tracking_enabled": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
    ],
)
async def test_a_body_that_is_not_an_object_is_400_json(tmp_path, raw):
    harness = Harness(tmp_path, tenants=tenants())
    async with harness.serving() as client:
        response = await client.put(
            PATH.format("acme"),
            headers={**bearer(harness.admin_token("acme")), "Content-Type": "application/json"},
            data=raw,
        )
        assert response.status_code == 400
        assert "error" in await response.get_json()


@pytest.mark.parametrize(
    "body",
    [
        {"subscription_tracking_html": "<p>a\u0000b</p>"},
        {"subscription_tracking_html": "\ud800"},
        {"ganalytics_utm_source": "news\u0000"},
        {"ganalytics_utm_campaign": "\udfff"},
        {"\u0000": 1},
        {"\ud800": True},
    ],
)
async def test_text_no_database_keeps_is_400_and_stores_nothing(tmp_path, database_url, body):
    # json.dumps writes NUL and a lone surrogate as escapes, as any client's JSON would.
    harness = Harness(tmp_path, tenants=tenants(), database_url=database_url)
    headers = {**bearer(harness.admin_token("acme")), "Content-Type": "application/json"}
    async with harness.serving() as client:
        response = await client.put(PATH.format("acme"), headers=headers, data=json.dumps(body))
        assert response.status_code == 400
        assert "error" in await response.get_json()
        got = await (await client.get(PATH.format("acme"), headers=headers)).get_json()
    assert {name: got[name] for name in SPEC_DEFAULTS} == SPEC_DEFAULTS
    assert got["subscription_tracking_html"] is None


# Any code point, with NUL and lone surrogates drawn often (st.text() never yields surrogates).
ANY_TEXT = st.lists(
    st.one_of(st.characters(), st.sampled_from(["\x00", "\ud800", "<% %>"])), max_size=20
).map("".join)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | ANY_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(ANY_TEXT, inner, max_size=3),
    max_leaves=8,
)
SETTING_NAMES = st.sampled_from(
    [*SPEC_DEFAULTS, "subscription_tracking_html", "ganalytics_utm_source", "no_such_setting"]
)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(body=st.dictionaries(SETTING_NAMES | ANY_TEXT, JSON_VALUES, max_size=3))
async def test_any_json_object_is_applied_whole_or_refused_with_400(tmp_path, body):
    harness = Harness(tmp_path, tenants=tenants())
    headers = {**bearer(harness.admin_token("acme")), "Content-Type": "application/json"}
    async with harness.serving() as client:
        before = await (await client.get(PATH.format("acme"), headers=headers)).get_json()
        response = await client.put(PATH.format("acme"), headers=headers, data=json.dumps(body))
        answer = await response.get_json()
        after = await (await client.get(PATH.format("acme"), headers=headers)).get_json()
    assert response.status_code in (200, 400), answer
    if response.status_code == 400:
        assert set(answer) <= {"error", "field"}
        assert after == before  # nothing half-written
    else:
        assert answer == after


async def test_missing_and_malformed_credentials_are_401(tmp_path):
    harness = Harness(tmp_path, tenants=tenants())
    async with harness.serving() as client:
        for headers in (
            {},
            {"Authorization": ""},
            {"Authorization": "Bearer"},
            {"Authorization": "Basic YWRtaW46YWRtaW4="},
            {"Authorization": "Bearer not-a-jwt"},
            {"Authorization": "Bearer a.b.c"},
        ):
            for method in (client.get, client.put):
                response = await method(PATH.format("acme"), headers=headers, json={})
                assert response.status_code == 401, headers
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
                assert "error" in await response.get_json()


# HS512 with our 256-bit secret is refused for its algorithm, not its key length.
@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
async def test_forged_none_expired_and_wrong_claims_are_401(tmp_path):
    harness = Harness(tmp_path, tenants=tenants())
    secret = harness.config.admin_jwt.secret
    assert secret is not None
    valid = harness.admin_token("acme")
    header, payload, signature = valid.split(".")
    tampered_payload = b64(json.dumps(claims("acme", sub="mallory")).encode())
    refused = {
        "alg none": hand_made({"alg": "none", "typ": "JWT"}, claims()),
        "alg None": hand_made({"alg": "None", "typ": "JWT"}, claims()),
        "other secret": jwt.encode(claims(), random_secret(), algorithm="HS256"),
        "payload swapped": f"{header}.{tampered_payload}.{signature}",
        "signature dropped": f"{header}.{payload}.",
        "HS512": jwt.encode(claims(), secret, algorithm="HS512"),
        "expired": mint_admin_token(harness.config.admin_jwt, "acme", -MINUTES),
        "no expiry": jwt.encode({k: v for k, v in claims().items() if k != "exp"}, secret),
        "no tenant": jwt.encode({k: v for k, v in claims().items() if k != "tenant"}, secret),
        "other audience": jwt.encode(claims(aud="someone-else"), secret),
        "other issuer": jwt.encode(claims(iss="someone-else"), secret),
        "not yet valid": jwt.encode(claims(nbf=claims()["iat"] + 3600), secret),
    }
    async with harness.serving() as client:
        assert (
            await client.get(PATH.format("acme"), headers=bearer(jwt.encode(claims(), secret)))
        ).status_code == 200  # the hand-made claims are otherwise good
        for what, token in refused.items():
            get = await client.get(PATH.format("acme"), headers=bearer(token))
            put = await client.put(
                PATH.format("acme"), headers=bearer(token), json={"open_tracking_enabled": False}
            )
            assert (get.status_code, put.status_code) == (401, 401), what
        got = await (await client.get(PATH.format("acme"), headers=bearer(valid))).get_json()
    assert got["open_tracking_enabled"] is True


@given(st.text(max_size=300) | st.builds(".".join, st.lists(st.text(max_size=60), max_size=4)))
def test_any_bearer_string_is_refused_as_an_auth_error(token):
    settings = AdminJwt(algorithm="HS256", issuer="scaisend", secret=random_secret())
    with pytest.raises(AuthError) as raised:
        verify_admin_token(settings, token, "acme")
    assert raised.value.status == 401


async def test_a_token_for_another_tenant_is_403(tmp_path):
    harness = Harness(tmp_path, tenants=tenants())
    beta_token = harness.admin_token("beta")
    async with harness.serving() as client:
        get = await client.get(PATH.format("acme"), headers=bearer(beta_token))
        put = await client.put(
            PATH.format("acme"), headers=bearer(beta_token), json={"open_tracking_enabled": False}
        )
        assert (get.status_code, put.status_code) == (403, 403)
        assert "acme" not in json.dumps(await get.get_json())
        # An unknown tenant is refused before anything is looked up for it.
        assert (await client.get(PATH.format("ghost"), headers=bearer(beta_token))).status_code == (
            403
        )
        ghost = await client.get(PATH.format("ghost"), headers=bearer(harness.admin_token("ghost")))
        assert ghost.status_code == 404
        acme = await (
            await client.get(PATH.format("acme"), headers=bearer(harness.admin_token("acme")))
        ).get_json()
    assert acme["open_tracking_enabled"] is True


async def test_rs256_tokens_verify_with_the_public_key(tmp_path):
    private_pem, public_pem = rsa_pair()
    harness = Harness(
        tmp_path,
        tenants=tenants(),
        server={"admin_jwt": {"algorithm": "RS256", "public_key": public_pem}},
    )
    settings = harness.config.admin_jwt
    assert settings.algorithm == "RS256"
    good = mint_admin_token(settings, "acme", MINUTES, private_key=private_pem)
    other_private, _ = rsa_pair()
    refused = {
        "other key pair": mint_admin_token(settings, "acme", MINUTES, private_key=other_private),
        # Algorithm confusion: HS256 keyed with the (public) PEM must not pass as RS256.
        "HS256 with the public key": hand_made(
            {"alg": "HS256", "typ": "JWT"}, claims(), sign=public_pem.encode()
        ),
        "alg none": hand_made({"alg": "none"}, claims()),
        "expired": mint_admin_token(settings, "acme", -MINUTES, private_key=private_pem),
    }
    async with harness.serving() as client:
        response = await client.put(
            PATH.format("acme"), headers=bearer(good), json={"image_embed_mode": "cid"}
        )
        assert response.status_code == 200
        assert (await response.get_json())["image_embed_mode"] == "cid"
        for what, token in refused.items():
            assert (
                await client.get(PATH.format("acme"), headers=bearer(token))
            ).status_code == 401, what
        beta = mint_admin_token(settings, "beta", MINUTES, private_key=private_pem)
        assert (await client.get(PATH.format("acme"), headers=bearer(beta))).status_code == 403


async def test_overrides_survive_a_restart(tmp_path, database_url):
    first = Harness(tmp_path, tenants=tenants(), database_url=database_url)
    async with first.serving() as client:
        response = await client.put(
            PATH.format("acme"),
            headers=bearer(first.admin_token("acme")),
            json={"click_tracking_enabled": False, "ganalytics_utm_campaign": "spring"},
        )
        assert response.status_code == 200
    second = Harness(tmp_path, tenants=tenants(), database_url=database_url)
    assert second.config.data_dir == first.config.data_dir
    async with second.serving() as client:
        got = await (
            await client.get(PATH.format("acme"), headers=bearer(second.admin_token("acme")))
        ).get_json()
        response = await client.put(
            PATH.format("acme"),
            headers=bearer(second.admin_token("acme")),
            json={"open_tracking_enabled": False},
        )
        after = await response.get_json()
    assert (got["click_tracking_enabled"], got["ganalytics_utm_campaign"]) == (False, "spring")
    assert got["open_tracking_enabled"] is True
    assert (after["click_tracking_enabled"], after["open_tracking_enabled"]) == (False, False)


class Levels:
    """A third-party feature whose schema a later version narrows (``level`` at most ``top``);
    its instrument hook writes the level it was given into the message."""

    __name__ = "levels"

    def __init__(self, top: int) -> None:
        self.feature = Feature(
            name="levels",
            order=60,
            settings_schema={
                "type": "object",
                "properties": {
                    "enable": {"type": "boolean", "default": True},
                    "level": {"type": "integer", "minimum": 1, "maximum": top, "default": 1},
                },
            },
        )

    @hookimpl
    def register_features(self) -> list[Feature]:
        return [self.feature]

    @hookimpl
    def instrument(self, doc: StagedDocument, ctx: InstrumentContext) -> None:
        if doc.html is not None:
            doc.html.append(f"<!-- level {ctx.settings['level']} -->")


async def test_an_override_a_later_schema_refuses_is_ignored_not_fatal(
    tmp_path, database_url, capfd
):
    """After an upgrade narrows a schema, the stale stored value is left out (and logged): the
    admin API still answers, the tenant's other overrides still apply and sends still go."""
    first = Harness(tmp_path, tenants=tenants(), plugins=[Levels(top=9)], database_url=database_url)
    async with first.serving() as client:
        response = await client.put(
            PATH.format("acme"),
            headers=bearer(first.admin_token("acme")),
            json={"levels_level": 7, "click_tracking_enabled": False},
        )
        assert response.status_code == 200
    second = Harness(
        tmp_path, tenants=tenants(), plugins=[Levels(top=3)], database_url=database_url
    )
    headers = bearer(second.admin_token("acme"))
    async with second.serving() as client:
        got = await client.get(PATH.format("acme"), headers=headers)
        assert got.status_code == 200
        body = await got.get_json()
        assert (body["levels_level"], body["click_tracking_enabled"]) == (1, False)
        html = await _html_of_a_send(second, client)
        assert "<!-- level 1 -->" in html
        assert "/t/c/" not in html  # the other stored override still applies
        # An update of another field is accepted; one of the refused field is checked as sent.
        other = await client.put(
            PATH.format("acme"), headers=headers, json={"ganalytics_enabled": True}
        )
        assert other.status_code == 200
        bad = await client.put(PATH.format("acme"), headers=headers, json={"levels_level": 5})
        assert bad.status_code == 400
        assert (await bad.get_json())["field"] == "levels_level"
        fixed = await client.put(PATH.format("acme"), headers=headers, json={"levels_level": 2})
        assert (await fixed.get_json())["levels_level"] == 2
    assert '"settings.override_ignored"' in capfd.readouterr().err


async def _html_of_a_send(harness: Harness, client, tracking_settings: dict | None = None) -> str:
    body: dict = {
        "personalizations": [{"to": [{"email": "ann@example.com"}]}],
        "from": {"email": "news@example.org"},
        "subject": "Hi",
        "content": [
            {
                "type": "text/html",
                "value": '<html><body><p><a href="https://example.com/x">x</a></p></body></html>',
            }
        ],
    }
    if tracking_settings is not None:
        body["tracking_settings"] = tracking_settings
    response = await client.post(
        "/v3/mail/send", json=body, headers=bearer(harness.api_key("acme"))
    )
    assert response.status_code == 202, await response.get_data()
    message_id = (await response.get_json())["message_id"]
    await harness.background_work_done()
    (path,) = (harness.config.data_dir / "outbox").glob(f"{message_id}-*.eml")
    message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    return str(message.get_body(("html",)).get_content())


async def test_layers_decide_what_a_send_does(tmp_path, database_url):
    """defaults < tenant YAML < stored overrides < the request's tracking_settings."""
    harness = Harness(
        tmp_path,
        tenants=tenants(acme={"open_tracking": {"enable": False}}),
        database_url=database_url,
    )
    headers = bearer(harness.admin_token("acme"))
    async with harness.serving() as client:
        yaml_layer = await _html_of_a_send(harness, client)
        assert not PIXEL.search(yaml_layer)  # YAML over the default (on)
        assert "/t/c/" in yaml_layer  # the default for click tracking still applies

        response = await client.put(
            PATH.format("acme"),
            headers=headers,
            json={"open_tracking_enabled": True, "click_tracking_enabled": False},
        )
        assert response.status_code == 200
        stored_layer = await _html_of_a_send(harness, client)
        assert PIXEL.search(stored_layer)  # the stored override over YAML
        assert "/t/c/" not in stored_layer
        assert 'href="https://example.com/x"' in stored_layer

        request_layer = await _html_of_a_send(harness, client, {"open_tracking": {"enable": False}})
        assert not PIXEL.search(request_layer)  # the request over everything
        assert "/t/c/" not in request_layer  # ...and only for what it names

        refused = await client.post(
            "/v3/mail/send",
            json={
                "personalizations": [{"to": [{"email": "ann@example.com"}]}],
                "from": {"email": "news@example.org"},
                "subject": "Hi",
                "content": [{"type": "text/plain", "value": "x"}],
                "tracking_settings": {"open_tracking": {"enable": "yes"}},
            },
            headers=bearer(harness.api_key("acme")),
        )
        assert refused.status_code == 400


def _config_file(harness: Harness, tmp_path: Path) -> Path:
    path = tmp_path / "scaisend.yaml"
    path.write_text(yaml.safe_dump(harness.document))
    return path


async def test_admin_token_command_mints_a_working_token(tmp_path, monkeypatch):
    monkeypatch.setenv("SCAISEND_DISABLE_PLUGIN_AUTOLOAD", "1")
    harness = Harness(tmp_path, tenants=tenants())
    config = _config_file(harness, tmp_path)
    runner = CliRunner()
    result = runner.invoke(cli, ["admin-token", "--config", str(config), "acme", "--ttl", "2m"])
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    decoded = jwt.decode(
        token,
        harness.config.admin_jwt.secret,
        algorithms=["HS256"],
        audience=ADMIN_AUDIENCE,
    )
    assert decoded["tenant"] == "acme"
    assert decoded["exp"] - decoded["iat"] == 120
    async with harness.serving() as client:
        response = await client.put(
            PATH.format("acme"), headers=bearer(token), json={"ganalytics_enabled": True}
        )
        assert response.status_code == 200
        assert (await client.get(PATH.format("beta"), headers=bearer(token))).status_code == 403

    for bad in (["nobody"], ["acme", "--ttl", "2y"], ["acme", "--ttl", "3d"]):
        refused = runner.invoke(cli, ["admin-token", "--config", str(config), *bad])
        assert refused.exit_code != 0, bad


async def test_admin_token_command_signs_rs256_with_a_key_file(tmp_path, monkeypatch):
    monkeypatch.setenv("SCAISEND_DISABLE_PLUGIN_AUTOLOAD", "1")
    private_pem, public_pem = rsa_pair()
    harness = Harness(
        tmp_path,
        tenants=tenants(),
        server={"admin_jwt": {"algorithm": "RS256", "public_key": public_pem}},
    )
    config = _config_file(harness, tmp_path)
    key_file = tmp_path / "admin.pem"
    key_file.write_text(private_pem)
    runner = CliRunner()
    without_key = runner.invoke(cli, ["admin-token", "--config", str(config), "acme"])
    assert without_key.exit_code != 0
    assert "private key" in without_key.output
    result = runner.invoke(
        cli, ["admin-token", "--config", str(config), "acme", "--key", str(key_file)]
    )
    assert result.exit_code == 0, result.output
    async with harness.serving() as client:
        response = await client.get(PATH.format("acme"), headers=bearer(result.stdout.strip()))
        assert response.status_code == 200
