"""The ``scaisend`` command line."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import email.utils
import gc
import json
import re
import signal
import sys
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import anyio
import click

from core import logs
from core.auth import mint_admin_token
from core.config import CONFIG_ENV, Config, ConfigError
from core.plugins import PluginHost, build_plugin_manager
from core.runtime import Plugins, load
from core.send.compose import SendError

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
    from core.delivery import DeliveryProcess
    from core.runtime import EXTENSION, Runtime

    http = {key: value for key, value in (("host", host), ("port", port)) if value is not None}
    plugins, config = _load(config_path, **({"http": http} if http else {}))
    _warn_embedded(config)
    app = create_app(config, plugins)
    runtime: Runtime = app.extensions[EXTENSION]
    delivery = None
    if config.sinks:
        # The sinks' work (enrichment, database writes) in a process of its own, off the
        # interpreter that answers requests.
        assert runtime.bus is not None
        runtime.bus.deliver_elsewhere()
        delivery = DeliveryProcess(
            config_path, click.get_current_context().find_root().params["log_level"]
        )
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
    # Everything built so far (plugins, schemas, models) lives as long as the server: kept out
    # of the collector's sweeps, which would otherwise walk it all again and again, pausing
    # the event loop for milliseconds at a time.
    gc.collect()
    gc.freeze()
    # The event loop waits at most this long for the interpreter while another thread works
    # (a database call of the API, a plugin call); the default, 5 ms, alone would spend a
    # whole p99 latency budget.
    sys.setswitchinterval(0.0005)
    if delivery is not None:
        delivery.start()
    try:
        anyio.run(run)
    finally:
        if delivery is not None:
            delivery.stop()  # after the last answer and the journal's last sync


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
    routes = routes_by_plugin(plugins.host)
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


def routes_by_plugin(host: PluginHost) -> dict[str, list[str]]:
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


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise click.ClickException(f"{path} is not UTF-8 JSON: {exc}") from exc


def _report(exc: SendError) -> None:
    click.echo("the send was refused:", err=True)
    for error in exc.errors:
        click.echo(f"  - {error.field or '(body)'}: {error.message}", err=True)
    sys.exit(2)


@cli.command()
@CONFIG_OPTION
@click.argument("body_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--tenant", default="default", show_default=True)
def send(config_path: Path | None, body_file: Path, tenant: str) -> None:
    """Send BODY_FILE (a JSON send body, as POST /v3/mail/send takes it)."""
    from core.api import ScaiSend

    body = _read_json(body_file)
    with ScaiSend(loaded=_load(config_path)) as scaisend:
        try:
            prepared = scaisend.prepare(body, tenant)
        except SendError as exc:
            _report(exc)
        if prepared.submission.sandbox:
            click.echo(f"sandbox: {len(prepared.recipients)} recipient(s) validated, none sent")
            return
        scaisend.service.persist(prepared)
        total = len(prepared.recipients)
        with click.progressbar(
            length=total, label="delivering", file=sys.stderr, show_pos=True
        ) as bar:
            results = anyio.run(lambda: scaisend.service.deliver(prepared, bar.update))
    counts = {
        outcome: sum(r.outcome == outcome for r in results)
        for outcome in ("delivered", "deferred", "failed")
    }
    click.echo(f"{prepared.message_id}: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    if counts["delivered"] != total:
        sys.exit(1)


def _body_from_eml(raw: bytes, to: str | None) -> dict[str, Any]:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    if not isinstance(message, EmailMessage):
        raise click.ClickException("not an RFC 5322 message")
    content = []
    for kind in ("plain", "html"):
        part = message.get_body(preferencelist=(kind,))
        if part is not None and isinstance(part, EmailMessage):
            content.append({"type": f"text/{kind}", "value": part.get_content()})
    sender = email.utils.parseaddr(str(message.get("From", "")))[1] or "sender@example.com"
    recipient = to or email.utils.parseaddr(str(message.get("To", "")))[1]
    return {
        "personalizations": [{"to": [{"email": recipient or "recipient@example.com"}]}],
        "from": {"email": sender},
        "subject": str(message.get("Subject", "")) or "(no subject)",
        "content": content,
    }


@cli.command("instrument")
@CONFIG_OPTION
@click.argument("source", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--tenant", default="default", show_default=True)
@click.option("--to", "to", help="the recipient to instrument for")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="write here instead of standard output",
)
def instrument_command(
    config_path: Path | None, source: Path, tenant: str, to: str | None, output: Path | None
) -> None:
    """Show SOURCE (.html or .eml) as one recipient would receive it; records nothing.

    An .html file prints the instrumented HTML; an .eml file the whole instrumented message.
    """
    from core.api import ScaiSend

    raw = source.read_bytes()
    is_html = source.suffix.lower() in {".html", ".htm"}
    if is_html:
        try:
            html = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise click.ClickException(f"{source} is not UTF-8") from exc
        body: dict[str, Any] = {
            "personalizations": [{"to": [{"email": to or "recipient@example.com"}]}],
            "from": {"email": "sender@example.com"},
            "subject": source.stem,
            "content": [{"type": "text/html", "value": html}],
        }
    else:
        body = _body_from_eml(raw, to)
    with ScaiSend(loaded=_load(config_path)) as scaisend:
        try:
            prepared = scaisend.prepare(body, tenant)
        except SendError as exc:
            _report(exc)
        if is_html:
            assert prepared.document.html is not None
            result = prepared.document.html.stamp(prepared.recipients[0]).encode("utf-8")
        else:
            result = next(scaisend.service.outgoing(prepared)).data
    if output is None:
        click.echo(result.decode("utf-8"), nl=False)
    else:
        output.write_bytes(result)
        click.echo(f"wrote {output} ({len(result)} bytes)", err=True)


def main(argv: list[str] | None = None) -> Any:
    host = PluginHost(build_plugin_manager())
    host.call_each("register_commands", cli=cli)
    return cli.main(args=argv, prog_name="scaisend")


if __name__ == "__main__":
    main()
