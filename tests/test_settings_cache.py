"""Stored overrides kept in memory, and effective settings remembered: never stale past the
documented delay, never changed by a caller, never remembering a refusal as a success."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import peewee as pw
import pytest
from playhouse.pool import PooledDatabase

from core.config import freeze, thaw
from core.overrides import StoredOverrides
from core.runtime import Runtime
from core.settings import SettingsError
from core.storage import connect_database, migrate
from core.testing import Harness
from tests.conftest import postgres_url
from tests.postgres import fresh_database


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def accept(overrides: dict) -> None:
    assert isinstance(overrides, dict)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[pw.Database]:
    if request.param == "sqlite":
        database = connect_database(f"sqlite:///{tmp_path / 'scaisend.db'}")
        migrate(database)
        yield database
        database.close()
    else:
        with fresh_database(postgres_url()) as url:
            database = connect_database(url)
            migrate(database)
            yield database
            if isinstance(database, PooledDatabase):
                database.close_all()


def test_a_local_update_is_seen_at_once(db):
    clock = Clock()
    overrides = StoredOverrides(db, ttl=5, clock=clock)
    assert overrides.get("acme") == {}
    overrides.merge("acme", {"open_tracking": {"enable": False}}, accept)
    assert overrides.get("acme") == {"open_tracking": {"enable": False}}
    overrides.merge("acme", {"click_tracking": {"enable": False}}, accept)
    assert overrides.get("acme") == {
        "open_tracking": {"enable": False},
        "click_tracking": {"enable": False},
    }


def test_another_nodes_update_is_seen_once_the_ttl_has_passed(db):
    clock = Clock()
    this_node = StoredOverrides(db, ttl=5, clock=clock)
    other_node = StoredOverrides(db, ttl=5, clock=clock)
    assert this_node.get("acme") == {}
    other_node.merge("acme", {"open_tracking": {"enable": False}}, accept)
    clock.now += 4.9
    assert this_node.get("acme") == {}  # within the documented delay
    clock.now += 0.2
    assert this_node.get("acme") == {"open_tracking": {"enable": False}}
    assert this_node.get("other") == {}  # kept per tenant


def test_a_refused_update_changes_nothing_kept(db):
    overrides = StoredOverrides(db, ttl=5, clock=Clock())
    overrides.merge("acme", {"open_tracking": {"enable": False}}, accept)

    def refuse(merged: dict) -> None:
        raise SettingsError("open_tracking.enable", "not a boolean")

    with pytest.raises(SettingsError):
        overrides.merge("acme", {"open_tracking": {"enable": "yes"}}, refuse)
    assert overrides.get("acme") == {"open_tracking": {"enable": False}}
    assert StoredOverrides(db).get("acme") == {"open_tracking": {"enable": False}}


def test_changing_what_get_returned_changes_nothing_kept(db):
    overrides = StoredOverrides(db, ttl=5, clock=Clock())
    overrides.merge("acme", {"ganalytics": {"utm_source": "a"}}, accept)
    first = overrides.get("acme")
    first["ganalytics"]["utm_source"] = "changed"
    assert overrides.get("acme") == {"ganalytics": {"utm_source": "a"}}


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    opened = Harness(tmp_path).open_runtime()
    try:
        yield opened
    finally:
        opened.close()


def test_effective_settings_follow_every_layer(runtime):
    tenant = runtime.config.tenants["acme"]
    plain = runtime.settings.effective(tenant)
    off = runtime.settings.effective(tenant, None, {"click_tracking": {"enable": False}})
    assert plain["click_tracking"]["enable"] is True
    assert off["click_tracking"]["enable"] is False
    stored = runtime.settings.effective(tenant, {"open_tracking": {"enable": False}}, None)
    assert stored["open_tracking"]["enable"] is False
    assert stored["click_tracking"]["enable"] is True
    assert runtime.settings.effective(tenant) == plain


def test_changing_effective_settings_changes_no_later_send(runtime):
    tenant = runtime.config.tenants["acme"]
    request = {"ganalytics": {"enable": True, "utm_source": "news"}}
    first = runtime.settings.effective(tenant, None, request)
    first["ganalytics"]["utm_source"] = "changed"
    first["open_tracking"]["enable"] = False
    again = runtime.settings.effective(tenant, None, request)
    assert again["ganalytics"]["utm_source"] == "news"
    assert again["open_tracking"]["enable"] is True
    assert request == {"ganalytics": {"enable": True, "utm_source": "news"}}


def test_invalid_settings_are_refused_every_time(runtime):
    tenant = runtime.config.tenants["acme"]
    for _ in range(2):
        with pytest.raises(SettingsError) as refused:
            runtime.settings.effective(tenant, None, {"open_tracking": {"enable": "yes"}})
        assert refused.value.field == "open_tracking.enable"
    # true and 1 are different requests, although they compare equal in Python
    assert runtime.settings.effective(tenant, None, {"open_tracking": {"enable": True}})
    with pytest.raises(SettingsError):
        runtime.settings.effective(tenant, None, {"open_tracking": {"enable": 1}})


def test_a_tenant_configured_again_under_the_same_id_gets_its_new_settings(tmp_path):
    runtime = Harness(tmp_path).open_runtime()
    layers = runtime.settings
    tenant = runtime.config.tenants["acme"]
    assert layers.effective(tenant)["open_tracking"]["enable"] is True  # and remembered
    tracking = {**thaw(tenant.tracking), "open_tracking": {"enable": False}}
    reconfigured = dataclasses.replace(tenant, tracking=freeze(tracking))
    try:
        assert layers.effective(reconfigured)["open_tracking"]["enable"] is False
        assert layers.effective(tenant)["open_tracking"]["enable"] is True
    finally:
        runtime.close()
