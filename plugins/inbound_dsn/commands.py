"""``scaisend parse-bounce FILE``: print what the parser reads from one raw message."""

from __future__ import annotations

import json
from pathlib import Path

import click

from core.hookspecs import hookimpl
from plugins.inbound_dsn.parse import parse_message, scorer_items


@hookimpl
def register_commands(cli: click.Group) -> None:
    cli.add_command(parse_bounce)


@click.command("parse-bounce")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def parse_bounce(file: Path) -> None:
    """Print the failed recipients and complaints FILE reports, as a JSON list.

    An empty list means FILE is no bounce or complaint (auto-replies and delivery notices
    included).
    """
    click.echo(json.dumps(scorer_items(parse_message(file.read_bytes())), indent=2))
