"""The ``scaisend`` command line."""

from __future__ import annotations

import datetime as dt
import json
import re
import signal
import sys
from pathlib import Path
from typing import Any

import anyio
import click

from core import logs
from core.auth import mint_admin_token
from core.config import CONFIG_ENV, Config, ConfigError
from core.plugins import PluginHost, build_plugin_manager
from core.runtime import Plugins, load

CONFIG_OPTION = click.option(
    "--config",
    "-c",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar=CONFIG_ENV,
    help=f"YAML configuration (default: ${CONFIG_ENV}, else the embedded default)",
)


def _load(config_path: Path | None, **server: Any) -> tuple[Plugins, Config]:
    try:
        return load(config_path, server_overrides=server)
    except ConfigError as exc:
        click.echo(f"configuration {config_path or '(embedded default)'} is invalid:", err=True)
        for problem in exc.problems:
            click.echo(f"  - {problem}", err=True)
        sys.exit(2)


def _warn_embedded(config: Config) -> None:
    if not config.embedded:
        return
    secrets_path = config.data_dir / "generated-secrets.json"
    api_key = config.tenants["default"].api_keys[0]
    lines = [
        "Running on the embedded default configuration (no --config given).",
        f"  data directory : {config.data_dir}",
        f"  database       : {config.database_url}",
        f"  tenant         : default    API key: {api_key}",
        f"  signing and admin keys were generated once and are kept in {secrets_path}",
        "  PRODUCTION MUST SET ITS OWN KEYS in a config file (README: Configuration).",
    ]
    width = max(len(line) for line in lines)
    click.secho("!" * (width + 4), fg="yellow", err=True)
    for line in lines:
        click.secho(f"! {line.ljust(width)} !", fg="yellow", err=True)
    click.secho("!" * (width + 4), fg="yellow", err=True)


@click.group()
@click.option(
    "--log-level",
    default="info",
    type=click.Choice(["debug", "info", "warning", "error"]),
    show_default=True,
)
def cli(log_level: str) -> None:
    """ScaiSend: self-hosted email engagement tracking."""
    logs.configure(log_level)


@cli.command()
@CONFIG_OPTION
@click.option("--host", help="listen address (overrides server.http.host)")
@click.option("--port", type=int, help="listen port (overrides server.http.port)")
def serve(config_path: Path | None, host: str | None, port: int | None) -> None:
    """Run the HTTP server (and everything it starts) until SIGINT or SIGTERM."""
    from hypercorn.asyncio import serve as hypercorn_serve
    from hypercorn.config import Config as HypercornConfig

    from core.app import create_app

    http = {key: value for key, value in (("host", host), ("port", port)) if value is not None}
    plugins, config = _load(config_path, **({"http": http} if http else {}))
    _warn_embedded(config)
    app = create_app(config, plugins)
    hypercorn = HypercornConfig()
    hypercorn.bind = [f"{config.http_host}:{config.http_port}"]
    hypercorn.accesslog = None
    hypercorn.errorlog = None
    hypercorn.graceful_timeout = 10

    async def run() -> None:
        stop = anyio.Event()

        async def watch_signals() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    stop.set()
                    return

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(watch_signals)
            await hypercorn_serve(app, hypercorn, shutdown_trigger=stop.wait)
            tasks.cancel_scope.cancel()

    click.echo(f"listening on http://{hypercorn.bind[0]}", err=True)
    anyio.run(run)


@cli.command("check-config")
@click.argument("config_file", type=click.Path(dir_okay=False, path_type=Path))
def check_config(config_file: Path) -> None:
    """Validate CONFIG_FILE and list every problem found (exit 2 if there is any)."""
    plugins, config = _load(config_file)
    click.echo(
        f"{config_file}: OK ({len(config.tenants)} tenant(s), "
        f"features: {', '.join(plugins.features.names())})"
    )


@cli.command("plugins")
@CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def list_plugins(config_path: Path | None, as_json: bool) -> None:
    """Features in pipeline order, with their plugins, routes and hooks."""
    plugins, _ = _load(config_path)
    routes = _routes_by_plugin(plugins.host)
    described = [
        {"name": entry["name"], "hooks": entry["hooks"], "routes": routes.get(entry["name"], [])}
        for entry in plugins.host.describe()
    ]
    features = [
        {
            "name": feature.name,
            "order": feature.order,
            "plugin": plugins.owners[feature.name].plugin_name,
            "description": feature.description,
        }
        for feature in plugins.features
    ]
    if as_json:
        click.echo(json.dumps({"features": features, "plugins": described}, indent=2))
        return
    click.echo("Features, in pipeline order:")
    for feature in features:
        click.echo(f"  {feature['order']:>4}  {feature['name']:<24} {feature['plugin']}")
    click.echo("\nPlugins:")
    for entry in described:
        click.echo(f"  {entry['name']}")
        click.echo(f"      hooks : {', '.join(entry['hooks']) or '-'}")
        for route in entry["routes"]:
            click.echo(f"      route : {route}")


def _routes_by_plugin(host: PluginHost) -> dict[str, list[str]]:
    from core.app import _rules

    result: dict[str, list[str]] = {}
    for impl, blueprint in host.collect("register_routes"):
        try:
            rules = sorted(_rules(blueprint))
        except Exception:  # noqa: BLE001, S112 - a broken blueprint is reported by serve
            continue
        result.setdefault(impl.plugin_name, []).extend(f"{m} {r}" for r, m in rules)
    return result


@cli.command("api-key")
@CONFIG_OPTION
@click.argument("tenant", default="default")
def api_key(config_path: Path | None, tenant: str) -> None:
    """Print TENANT's first API key (default: the ``default`` tenant)."""
    _, config = _load(config_path)
    found = config.tenant(tenant)
    if found is None:
        raise click.ClickException(f"unknown tenant {tenant!r}")
    if not found.api_keys:
        raise click.ClickException(f"tenant {tenant!r} has no API keys configured")
    click.echo(found.api_keys[0])


_TTL = re.compile(r"^(\d+)([smhd]?)$")


def _parse_ttl(text: str) -> dt.timedelta:
    match = _TTL.match(text.strip())
    if not match:
        raise click.BadParameter("use a number with s, m, h or d, e.g. 15m")
    number, unit = int(match.group(1)), match.group(2) or "s"
    ttl = dt.timedelta(
        **{{"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[unit]: number}
    )
    if not dt.timedelta(seconds=1) <= ttl <= dt.timedelta(days=1):
        raise click.BadParameter("between 1 second and 1 day")
    return ttl


@cli.command("admin-token")
@CONFIG_OPTION
@click.argument("tenant")
@click.option("--ttl", default="15m", show_default=True, help="lifetime: 30s, 15m, 2h, 1d")
@click.option(
    "--key",
    "key_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="RS256 private key (PEM) when admin_jwt.private_key is not configured",
)
@click.option("--subject", default="operator", show_default=True)
def admin_token(
    config_path: Path | None, tenant: str, ttl: str, key_file: Path | None, subject: str
) -> None:
    """Mint a short-lived admin JWT for TENANT."""
    _, config = _load(config_path)
    if config.tenant(tenant) is None:
        raise click.ClickException(f"unknown tenant {tenant!r}")
    try:
        token = mint_admin_token(
            config.admin_jwt,
            tenant,
            _parse_ttl(ttl),
            subject,
            key_file.read_text() if key_file else None,
        )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(token)


def main(argv: list[str] | None = None) -> Any:
    host = PluginHost(build_plugin_manager())
    host.call_each("register_commands", cli=cli)
    return cli.main(args=argv, prog_name="scaisend")


if __name__ == "__main__":
    main()
