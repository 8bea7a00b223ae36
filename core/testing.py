"""Helpers for testing ScaiSend and its plugins.

Build an app with exactly the plugins and tenants a test needs, no entry-point autoload, and a
temporary data directory::

    def test_my_route(tmp_path):
        harness = Harness(tmp_path, plugins=[my_plugin])
        async with harness.serving() as client:
            response = await client.get("/my/route")
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import secrets
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pluggy
from quart import Quart
from quart.typing import TestClientProtocol

from core.app import create_app
from core.auth import mint_admin_token
from core.config import Config
from core.plugins import DEFAULT_PLUGINS, build_plugin_manager
from core.runtime import EXTENSION, Plugins, Runtime, load
from core.settings import deep_merge


def random_secret() -> str:
    return secrets.token_urlsafe(32)


def base_document(data_dir: Path, tenants: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A complete configuration document with fresh random keys."""
    return {
        "server": {
            "data_dir": str(data_dir),
            "tracking_base_url": "https://track.example.test",
            "smtp": {"port": 0},
            "signing_keys": [{"id": "test1", "secret": random_secret()}],
            "admin_jwt": {"algorithm": "HS256", "secret": random_secret()},
            "sinks": [{"type": "database"}, {"type": "jsonl"}],
        },
        "tenants": dict(tenants)
        if tenants is not None
        else {"acme": {"api_keys": ["acme-key-" + random_secret()]}},
    }


def plugin_manager(
    plugins: Iterable[object] = (), builtins: Sequence[str] = DEFAULT_PLUGINS
) -> pluggy.PluginManager:
    """The built-in plugins plus ``plugins``, never anything from entry points."""
    return build_plugin_manager(builtins, autoload=False, extra=plugins)


class Harness:
    """A configuration, an app built from it, and ways to talk to it."""

    def __init__(
        self,
        tmp_path: Path,
        *,
        plugins: Iterable[object] = (),
        builtins: Sequence[str] = DEFAULT_PLUGINS,
        tenants: Mapping[str, Any] | None = None,
        server: Mapping[str, Any] | None = None,
        database_url: str | None = None,
    ) -> None:
        self.tmp_path = tmp_path
        document = base_document(tmp_path / "data", tenants)
        if server:
            document["server"] = deep_merge(document["server"], server)
        if database_url:
            document["server"]["database_url"] = database_url
        self.document = document
        self.pm = plugin_manager(plugins, builtins)
        self.plugins, self.config = load(
            document=copy.deepcopy(document), pm=self.pm, base_dir=tmp_path, environ={}
        )

    @property
    def loaded(self) -> tuple[Plugins, Config]:
        return self.plugins, self.config

    def app(self) -> Quart:
        return create_app(self.config, self.plugins)

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[TestClientProtocol]:
        """A test client of a started app (event bus running, startup hooks done)."""
        app = self.app()
        async with app.test_app() as test_app:
            self.quart_app = app
            self.runtime = app.extensions[EXTENSION]
            yield test_app.test_client()

    async def background_work_done(self) -> None:
        """Wait for the app's background tasks (deliveries after a 202, resumed sends)."""
        while self.quart_app.background_tasks:
            await asyncio.gather(*self.quart_app.background_tasks, return_exceptions=True)

    def open_runtime(self) -> Runtime:
        """A runtime without an app (the caller starts and closes it)."""
        return Runtime.open(self.config, self.plugins)

    def admin_token(self, tenant: str, ttl: dt.timedelta = dt.timedelta(minutes=5)) -> str:
        return mint_admin_token(self.config.admin_jwt, tenant, ttl)

    def api_key(self, tenant: str) -> str:
        return self.config.tenants[tenant].api_keys[0]
