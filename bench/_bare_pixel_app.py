"""The baseline of http_bench.py: a bare Quart app on Hypercorn answering the tracking routes.

Same route shapes as ScaiSend's: ``GET /t/o/<token>.gif`` with the same constant 42-byte GIF
and headers, and ``GET /t/c/<token>?u=...`` with the same 302 to ``u`` and the same headers,
but no token check, no MAC over the destination, no event, no plugins. It is served the way
``scaisend serve`` serves (``hypercorn.asyncio.serve`` in one process, default worker class,
access and error logs off), so the difference between the two is ScaiSend's own work.

    python bench/_bare_pixel_app.py --host 127.0.0.1 --port 8001
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import signal

from hypercorn.asyncio import serve
from hypercorn.config import Config
from quart import Quart, Response, request

PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
HEADERS = {
    "Content-Type": "image/gif",
    "Cache-Control": "private, no-cache, no-store, must-revalidate",
    "Pragma": "no-cache",
}

app = Quart(__name__)


@app.get("/t/o/<token>.gif")
async def pixel(token: str) -> Response:
    return Response(PIXEL, status=200, headers=HEADERS)


@app.get("/t/c/<token>")
async def click(token: str) -> Response:
    return Response(
        b"", status=302, headers={"Location": request.args["u"], "Cache-Control": "no-store"}
    )


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    config = Config()
    config.bind = [f"{args.host}:{args.port}"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 10

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(app, config, shutdown_trigger=stop.wait)

    asyncio.run(run())


if __name__ == "__main__":
    main()
