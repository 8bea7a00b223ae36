"""The hooks a ScaiSend plugin can implement.

Built-in features and third-party plugins use exactly these hooks. Core calls every
implementation itself, one at a time (not through ``pm.hook``), so that a plugin that raises or
overruns ``server.plugin_timeout_seconds`` is logged and skipped without affecting the others.
Implementations may accept only the arguments they need; core always passes keywords.
Hooks whose docstring says "may be async" accept an ``async def`` implementation too.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click
    import peewee
    from quart import Blueprint

    from core.features import Feature
    from core.inbound import InboundMessage
    from core.instrument import InstrumentContext
    from core.pipeline import StagedDocument
    from core.runtime import Runtime
    from core.sinks import SinkType
    from core.transports import TransportType

PROJECT = "scaisend"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_features() -> Iterable[Feature]:
    """Declare the tracking features this plugin provides.

    Called once, when the plugin manager is built (before configuration is validated, because
    each feature's schemas become part of the configuration schema).

    Returns an iterable of :class:`core.Feature`. Results of all plugins are concatenated; a
    feature name registered twice is a configuration error. The pipeline runs features in
    ascending ``order`` (ties broken by name), after applying ``server.feature_order``.
    """


@hookspec
def register_routes() -> Iterable[Blueprint]:
    """Contribute HTTP routes.

    Called once by :func:`core.app.create_app`. Returns Quart blueprints; every blueprint of
    every plugin is mounted at the root of the app, in plugin registration order. A blueprint
    that declares a route already taken by core or another plugin is refused and logged.
    Views reach the running services with :func:`core.current_runtime`.
    """


@hookspec
def register_sinks() -> Iterable[SinkType]:
    """Contribute event sink types (a name, an options schema and a factory).

    Called once, when the plugin manager is built. Returns an iterable of
    :class:`core.SinkType`; results of all plugins are concatenated, and a type name offered
    twice keeps the first. The operator picks sinks by ``type`` under ``server.sinks``; each
    entry's options are validated against the sink type's schema as part of the configuration.
    """


@hookspec
def register_transports() -> Iterable[TransportType]:
    """Contribute transports: the ways finished messages leave ScaiSend.

    Called once, when the plugin manager is built. Returns an iterable of
    :class:`core.TransportType` (a type name, an options schema and a factory); results of all
    plugins are concatenated, and a type name offered twice keeps the first. The operator picks
    one with ``server.transport.type``; its options are validated as part of the configuration,
    and the factory is called once per process when the first message is sent.
    """


@hookspec
def register_models() -> Iterable[type[peewee.Model]]:
    """Declare the database tables this plugin keeps.

    Called once, when the runtime opens the database, after core's own schema is migrated.
    Returns peewee model classes declared on :data:`core.storage.database_proxy` (so they live
    in the server's database, SQLite or PostgreSQL). Results of all plugins are concatenated;
    each missing table is created (existing tables are left as they are, so a plugin that
    changes a table ships its own migration). A plugin that raises keeps no tables, and its
    routes will answer as their own error handling says.
    """


@hookspec(firstresult=True)
def handle_inbound_mail(message: InboundMessage, runtime: Runtime) -> Any:
    """Claim and process one message received on the inbound SMTP port. May be async.

    Called once per accepted message (after the SMTP ``DATA`` has been received in full and
    before the reply to it is sent), for each implementation in turn until one returns a
    result that is not ``None``. ``message`` holds the envelope (client address, ``MAIL FROM``,
    ``RCPT TO`` list) and the raw bytes. Return ``None`` to leave the message to the next
    plugin; return a short string naming what was done (``"bounce"``, ``"complaint"``,
    ``"ignored"``...) to claim it. The SMTP client is answered 250 once a plugin has claimed it
    and the effects are durable; a message no plugin claims is kept in the data directory's
    ``inbound/unclaimed/`` and logged. A plugin that raises or overruns its budget is logged,
    the next one is tried, and if none succeeds the client gets 451 (try again later).
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add sub-commands to the ``scaisend`` command line.

    Called once when the ``scaisend`` command starts, before its arguments are parsed, with
    the root :class:`click.Group`. Return nothing; register commands with ``@cli.command()``.
    A plugin that raises is logged and its commands are missing; the built-in commands work.
    """


@hookspec
def instrument(doc: StagedDocument, ctx: InstrumentContext) -> None:
    """Instrument one outgoing message for the feature this plugin registered.

    Called once per compiled message for each feature that is enabled in the effective
    settings of the send (``ctx.settings["enable"]``, when the feature has that field),
    in feature order, and only for the plugin that registered ``ctx.feature``. ``doc`` holds
    the author's bodies (``doc.html``, ``doc.text``; either may be ``None``); record edits
    with ``replace``/``insert``/``append`` on a part and ``doc.add_header``. Offsets always
    refer to the author's original text, and a value may be a per-recipient slot (a callable
    taking a :class:`core.Recipient`). Return nothing.

    The call's edits take effect only if it returns within the plugin time budget without
    raising and none of them overlaps an earlier feature's edit; otherwise they are discarded,
    the failure is logged as ``plugin.failed`` (``plugin.timeout`` for an overrun) and the
    message goes out without this feature. The features of one message are called one after
    another on a worker thread, not the sender's (so context variables of the caller are not
    set), each with its own budget; an earlier feature's edits are merged before the next call.
    """


@hookspec
def startup(runtime: Runtime) -> Any:
    """Prepare the plugin's resources when the server starts. May be async.

    Called after storage is migrated and the event bus is running, before the first request
    is served, for every plugin, in registration order. The return value is ignored. A plugin
    that raises or overruns the time budget is logged and the server starts anyway.
    """


@hookspec
def shutdown(runtime: Runtime) -> Any:
    """Release the plugin's resources when the server stops. May be async.

    Called after the last request, before the event bus drains, for every plugin, in reverse
    registration order. The return value is ignored; failures are logged and skipped.
    """
