"""The running services a server (or a CLI command) works with, built from plugins and config."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import peewee as pw
import pluggy
import structlog
from quart import current_app

from core.config import Config, ConfigError, ConfigProblem, Tenant, build_config, load_document
from core.enrichment import EventEnricher
from core.events import Event, EventBus, Journal
from core.features import Feature, OrderedFeatures
from core.overrides import StoredOverrides
from core.plugins import Implementation, PluginHost, build_plugin_manager
from core.settings import SettingsError, SettingsLayers, deep_merge
from core.sinks import Sink, SinkType
from core.storage import connect_database, migrate
from core.suppressions import SuppressionStore
from core.tokens import TokenCodec
from core.transports import Transport, TransportType

log = structlog.get_logger("scaisend.runtime")

EXTENSION = "scaisend"


@dataclass(frozen=True)
class Plugins:
    """The plugin manager and what its plugins contributed."""

    host: PluginHost
    features: OrderedFeatures
    owners: Mapping[str, Implementation]
    sink_types: Mapping[str, SinkType]
    transport_types: Mapping[str, TransportType]

    @classmethod
    def collect(
        cls,
        pm: pluggy.PluginManager,
        order: Mapping[str, int] | None = None,
        budget: float | None = None,
    ) -> Plugins:
        host = PluginHost(pm) if budget is None else PluginHost(pm, budget)
        owners: dict[str, Implementation] = {}
        found: list[Feature] = []
        for impl, feature in host.features():
            if feature.name in owners:
                raise ConfigError(
                    [
                        ConfigProblem(
                            "",
                            f"feature {feature.name!r} is registered by both "
                            f"{owners[feature.name].plugin_name} and {impl.plugin_name}",
                        )
                    ]
                )
            owners[feature.name] = impl
            found.append(feature)
        return cls(
            host,
            OrderedFeatures.build(found, order),
            owners,
            _by_type(host, "register_sinks", SinkType),
            _by_type(host, "register_transports", TransportType),
        )

    def models(self) -> list[type[pw.Model]]:
        """The tables plugins declared through ``register_models``."""
        found: list[type[pw.Model]] = []
        for impl, model in self.host.collect("register_models"):
            if isinstance(model, type) and issubclass(model, pw.Model):
                found.append(model)
            else:
                log.error(
                    "plugin.failed",
                    hook="register_models",
                    plugin=impl.plugin_name,
                    error=f"returned {model!r}, not a peewee model class",
                )
        return found

    def reordered(self, order: Mapping[str, int], budget: float) -> Plugins:
        try:
            features = OrderedFeatures.build(self.features, order)
        except ValueError as exc:
            raise ConfigError([ConfigProblem("server.feature_order", str(exc))]) from exc
        return Plugins(
            PluginHost(self.host.pm, budget),
            features,
            self.owners,
            self.sink_types,
            self.transport_types,
        )


_T = TypeVar("_T", SinkType, TransportType)


def _by_type(host: PluginHost, hook: str, kind: type[_T]) -> dict[str, _T]:
    found: dict[str, _T] = {}
    for impl, item in host.collect(hook):
        if isinstance(item, kind) and item.type not in found:
            found[item.type] = item
        else:
            log.error(
                "plugin.failed",
                hook=hook,
                plugin=impl.plugin_name,
                error=f"invalid or duplicate {kind.__name__} {item!r}",
            )
    return found


def load(
    config_path: Path | None = None,
    *,
    pm: pluggy.PluginManager | None = None,
    document: Mapping[str, Any] | None = None,
    base_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
    server_overrides: Mapping[str, Any] | None = None,
) -> tuple[Plugins, Config]:
    """Plugins and a validated config: from ``document`` if given, else the file, else embedded.

    ``server_overrides`` (command-line options) are merged over the document's ``server``.
    """
    plugins = Plugins.collect(pm or build_plugin_manager())
    if document is not None:
        doc, base, embedded, source = dict(document), base_dir or Path.cwd(), False, "(given)"
    else:
        doc, base, embedded, source = load_document(config_path)
    if server_overrides:
        server = doc.get("server")
        doc["server"] = deep_merge(server if isinstance(server, Mapping) else {}, server_overrides)
    config = build_config(
        doc,
        plugins.features,
        plugins.sink_types.values(),
        base_dir=base,
        environ=environ,
        embedded=embedded,
        source=source,
        transport_types=plugins.transport_types.values(),
    )
    return plugins.reordered(config.feature_order, config.plugin_timeout), config


@dataclass
class Runtime:
    """Config, plugins, database, tokens, settings and the event bus of one process."""

    config: Config
    plugins: Plugins
    db: pw.Database
    tokens: TokenCodec
    settings: SettingsLayers
    overrides: StoredOverrides
    suppressions: SuppressionStore
    bus: EventBus | None = None
    _transport: Transport | None = field(default=None, repr=False)
    _api_keys: dict[bytes, str] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, config: Config, plugins: Plugins, *, role: str | None = None) -> Runtime:
        """Connect and migrate the database and build the event bus (not yet started).

        ``role`` names a journal of its own for a process that runs beside the server on the
        same data directory (the command line uses ``cli``).
        """
        config.data_dir.mkdir(parents=True, exist_ok=True)
        db = connect_database(config.database_url)
        migrate(db, plugins.models())
        runtime = cls(
            config=config,
            plugins=plugins,
            db=db,
            tokens=TokenCodec(config.signing_keys),
            settings=SettingsLayers(plugins.features),
            overrides=StoredOverrides(db),
            suppressions=SuppressionStore(db),
        )
        for tenant in config.tenants.values():
            for key in tenant.api_keys:
                runtime._api_keys[hashlib.sha256(key.encode()).digest()] = tenant.id
        runtime.bus = EventBus(
            Journal(
                config.data_dir / "journal",
                f"{config.node_id}.{role}" if role else config.node_id,
            ),
            runtime._build_sinks(),
            enrich=(enricher := EventEnricher(db)),
            read_ahead=enricher.overlaps_storing,
        )
        return runtime

    def _build_sinks(self) -> list[Sink]:
        sinks = []
        for options in self.config.sinks:
            sink_type = self.plugins.sink_types[options["type"]]
            sinks.append(sink_type.factory(options, self))
        return sinks

    def transport(self) -> Transport:
        """The configured transport, built on first use."""
        if self._transport is None:
            options = self.config.transport
            self._transport = self.plugins.transport_types[options["type"]].factory(options, self)
        return self._transport

    async def aclose_transport(self) -> None:
        if self._transport is not None:
            transport, self._transport = self._transport, None
            await transport.aclose()

    def start(self) -> None:
        assert self.bus is not None
        self.bus.start()

    def close(self) -> None:
        if self.bus is not None:
            self.bus.stop()
        with contextlib.suppress(Exception):
            self.db.close()

    def emit(self, event: Event) -> None:
        """Record an event: durable when this returns, delivered to sinks in the background."""
        assert self.bus is not None
        self.bus.emit(event)

    def tenant(self, tenant_id: str) -> Tenant | None:
        return self.config.tenant(tenant_id)

    def tenant_for_api_key(self, key: str) -> Tenant | None:
        """The tenant owning ``key``, looked up by its digest so timing reveals nothing of it."""
        tenant_id = self._api_keys.get(hashlib.sha256(key.encode()).digest())
        return self.config.tenants[tenant_id] if tenant_id is not None else None

    def effective_settings(
        self, tenant: Tenant, request: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        stored = self.overrides.get(tenant.id)
        try:
            return self.settings.effective(tenant, stored, request)
        except SettingsError:
            usable = self.settings.applicable(tenant, stored) if stored else stored
            if usable == stored:
                raise  # the request's own settings are wrong
            return self.settings.effective(tenant, usable, request)


def current_runtime() -> Runtime:
    """The :class:`Runtime` of the app serving the current request."""
    runtime: Runtime = current_app.extensions[EXTENSION]
    return runtime
