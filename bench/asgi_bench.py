"""The tracking routes' cost in the application alone: ScaiSend's ASGI app against the bare app.

The same requests as http_bench.py (valid pixel and click URLs over 1,000 recipients) are handed
straight to each application's ASGI callable, one after another, in one process: no sockets, no
Hypercorn, no load generator. What is left is the work each application does per request, and
the difference is ScaiSend's own (token and binding checks, the event's journal line, the request
id), measured with far less noise than over HTTP on a shared machine.

* ScaiSend: ``create_app`` over the same configuration as http_bench.py (SQLite, ``database``
  sink, open, click and ganalytics on), started as ``scaisend serve`` starts it, its sinks left
  to another process (``deliver_elsewhere``: nothing follows the journal here, so each request
  costs what it costs the server) and its start-up objects frozen out of the collector.
* Baseline: the app of ``bench/_bare_pixel_app.py``.

Per round, ``--requests`` requests to each app in turn, alternating; CPU time of this thread
per request; the median of the rounds.

    python bench/asgi_bench.py [--requests 4000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import _common
import yaml
from _bare_pixel_app import app as bare
from _common import fmt_ratio, table
from http_bench import TOKENS, click_paths
from quart import Quart

from core import logs
from core.app import create_app
from core.config import SigningKey
from core.runtime import EXTENSION, load
from core.testing import base_document
from core.tokens import TokenCodec


def scope(target: str) -> dict[str, Any]:
    path, _, query = target.partition("?")
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"wrk/4.1.0")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "extensions": {},
    }


async def drive(app: Quart, scopes: list[dict[str, Any]], count: int) -> tuple[float, set[int]]:
    """CPU microseconds per request over ``count`` requests, and the statuses answered."""
    statuses: set[int] = set()
    forever = asyncio.Event()

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.add(message["status"])

    started = time.thread_time()
    for n in range(count):
        given = False

        async def receive() -> dict[str, Any]:
            nonlocal given
            if given:  # the client stays connected until the answer is sent
                await forever.wait()
            given = True
            return {"type": "http.request", "body": b"", "more_body": False}

        await app(scopes[n % len(scopes)], receive, send)  # type: ignore[arg-type]
    return (time.thread_time() - started) / count * 1e6, statuses


async def measure(args: argparse.Namespace, data: Path) -> list[tuple[str, dict[str, float]]]:
    document = base_document(data)
    document["server"]["sinks"] = [{"type": "database"}]
    document["tenants"]["acme"]["tracking"] = {
        "open_tracking": {"enable": True},
        "click_tracking": {"enable": True},
        "ganalytics": {"enable": True, "utm_source": "newsletter", "utm_medium": "email"},
    }
    config_path = data.parent / "scaisend.yaml"
    config_path.write_text(yaml.safe_dump(document))
    key = document["server"]["signing_keys"][0]
    codec = TokenCodec([SigningKey(key["id"], key["secret"].encode())])
    message_id = uuid.uuid4().hex
    routes = {
        "pixel GET /t/o/<token>.gif": [
            scope(f"/t/o/{codec.issue('acme', message_id, i)}.gif") for i in range(TOKENS)
        ],
        "redirect GET /t/c/<token>?u=&s=": [scope(p) for p in click_paths(codec, message_id)],
    }
    plugins, config = load(config_path)
    scaisend = create_app(config, plugins)
    scaisend.extensions[EXTENSION].bus.deliver_elsewhere()
    results = []
    async with scaisend.test_app(), bare.test_app():
        gc.collect()
        gc.freeze()
        sys.setswitchinterval(0.0005)  # as `scaisend serve` sets it
        for route, scopes in routes.items():
            runs: dict[str, list[float]] = {"bare Quart": [], "ScaiSend": []}
            for app in (bare, scaisend):  # warm-up
                await drive(app, scopes, len(scopes))
            for _ in range(args.rounds):
                for name, app in (("bare Quart", bare), ("ScaiSend", scaisend)):
                    cpu, statuses = await drive(app, scopes, args.requests)
                    if statuses != ({200} if "pixel" in route else {302}):
                        raise SystemExit(f"{name} answered {statuses} on {route}")
                    runs[name].append(cpu)
            results.append(
                (route, {name: statistics.median(values) for name, values in runs.items()})
            )
            every = "; ".join(f"{n} {[round(v) for v in vs]}" for n, vs in runs.items())
            print(f"{route}, every round (us): {every}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=4000, help="requests per app per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    args.requests = min(max(args.requests, 100), 100_000)
    args.rounds = min(max(args.rounds, 1), 20)
    logs.configure("warning")
    with tempfile.TemporaryDirectory(prefix="scaisend-asgi-bench-") as tmp:
        results = asyncio.run(measure(args, Path(tmp) / "data"))
    print()
    print(
        table(
            ["route", "bare Quart us", "ScaiSend us", "ScaiSend - bare us", "bare / ScaiSend"],
            [
                (
                    route,
                    f"{cpu['bare Quart']:.0f}",
                    f"{cpu['ScaiSend']:.0f}",
                    f"{cpu['ScaiSend'] - cpu['bare Quart']:.0f}",
                    fmt_ratio(cpu["bare Quart"] / cpu["ScaiSend"]),
                )
                for route, cpu in results
            ],
        )
    )
    print(
        f"CPU time per request in the application (ASGI call, no sockets), median of "
        f"{args.rounds} rounds of {args.requests:,} requests per app"
    )
    print(_common.footer())


if __name__ == "__main__":
    main()
