"""The Quart application: core routes, every plugin's blueprints, errors as JSON, lifecycle."""

from __future__ import annotations

from typing import Any

import anyio
import structlog
from quart import Blueprint, Quart, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from core.admin import blueprint as admin_blueprint
from core.config import Config
from core.inbound_listener import InboundListener
from core.plugins import build_plugin_manager
from core.request_id import current_request_id, with_request_id
from core.runtime import EXTENSION, Plugins, Runtime, current_runtime
from core.send.api import SERVICE
from core.send.api import blueprint as send_blueprint
from core.send.service import SendService
from core.storage import ping

log = structlog.get_logger("scaisend.app")

INBOUND = "scaisend.inbound"
"""``app.extensions`` key of the :class:`InboundListener` (its bound port, in tests)."""

health = Blueprint("health", __name__)


@health.get("/health")
async def get_health() -> Response:
    return jsonify({"status": "healthy"})


@health.get("/ready")
async def get_ready() -> tuple[Response, int]:
    runtime = current_runtime()
    try:
        with anyio.fail_after(2.0):
            await anyio.to_thread.run_sync(ping, runtime.db, abandon_on_cancel=True)
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
        log.warning("ready.database_unreachable", error=repr(exc))
        return jsonify({"status": "unavailable", "error": "database unreachable"}), 503
    return jsonify({"status": "ready"}), 200


def create_app(config: Config, plugins: Plugins | None = None) -> Quart:
    """Build the app for ``config``. The database is migrated now; the event bus and the
    plugins' ``startup`` hooks run when serving starts, and stop when it ends."""
    if plugins is None:
        plugins = Plugins.collect(
            build_plugin_manager(), config.feature_order, config.plugin_timeout
        )
    runtime = Runtime.open(config, plugins)
    app = Quart("scaisend")
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    app.config["JSON_SORT_KEYS"] = False
    app.extensions[EXTENSION] = runtime
    sender = app.extensions[SERVICE] = SendService(runtime)
    inbound = app.extensions[INBOUND] = InboundListener(runtime)

    app.register_blueprint(health)
    app.register_blueprint(admin_blueprint)
    app.register_blueprint(send_blueprint)
    for impl, blueprint in plugins.host.collect("register_routes"):
        _mount(app, blueprint, impl.plugin_name)

    app.asgi_app = with_request_id(app.asgi_app)  # type: ignore[method-assign,assignment]
    _install_error_handlers(app)

    @app.before_serving
    async def start() -> None:
        runtime.start()
        await plugins.host.call_each_async("startup", runtime=runtime)
        await inbound.start()
        app.add_background_task(sender.resume)
        log.info(
            "server.started",
            tracking_base_url=config.tracking_base_url,
            database=config.database_url.split("://", 1)[0],
            features=plugins.features.names(),
        )

    @app.after_serving
    async def stop() -> None:
        await inbound.aclose()
        await plugins.host.call_each_async("shutdown", reverse=True, runtime=runtime)
        await runtime.aclose_transport()
        await anyio.to_thread.run_sync(runtime.close)
        log.info("server.stopped")

    return app


def _rules(blueprint: Blueprint) -> set[tuple[str, str]]:
    probe = Quart("probe")
    probe.register_blueprint(blueprint)
    return {
        (rule.rule, method)
        for rule in probe.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in (rule.methods or ())
        if method not in {"HEAD", "OPTIONS"}
    }


def _mount(app: Quart, blueprint: Any, plugin: str) -> None:
    if not isinstance(blueprint, Blueprint):
        log.error(
            "plugin.failed",
            hook="register_routes",
            plugin=plugin,
            error=f"returned {type(blueprint).__name__}, not a Blueprint",
        )
        return
    try:
        wanted = _rules(blueprint)
        taken = {
            (rule.rule, method)
            for rule in app.url_map.iter_rules()
            for method in (rule.methods or ())
        }
        clash = sorted(wanted & taken)
        if clash:
            raise ValueError(f"routes already taken: {clash}")
        app.register_blueprint(blueprint)
    except Exception as exc:  # noqa: BLE001 - a bad blueprint must not take the server down
        log.error("plugin.failed", hook="register_routes", plugin=plugin, error=str(exc))


def _install_error_handlers(app: Quart) -> None:
    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> tuple[Response, int]:
        status = exc.code or 500
        message = exc.description or exc.name
        if status == 413:
            message = f"request body larger than {app.config['MAX_CONTENT_LENGTH']} bytes"
        return jsonify({"error": message}), status

    @app.errorhandler(Exception)
    async def unexpected(exc: Exception) -> tuple[Response, int]:
        log.error(
            "request.failed",
            method=request.method,
            # The route's pattern, not the path: tracking paths carry recipients' tokens.
            route=request.url_rule.rule if request.url_rule is not None else None,
            error=repr(exc),
            exc_info=exc,
        )
        return jsonify({"error": "internal server error", "request_id": current_request_id()}), 500
