"""The image proxy on loopback: ``GET /i/{image_id}`` beside the pixel, on one REAL server.

One ``scaisend serve`` subprocess (config from ``core.testing.base_document``, SQLite and the
``database`` sink in a temporary data directory) with one 600x400 JPEG in tenant acme's
library, uploaded through ``POST /v3/images``. A closed-loop Python client (asyncio, raw
HTTP/1.1 keep-alive, ``--connections`` connections) sends each kind of request for
``--duration`` seconds, in turn, ``--repeats`` times; the best run of each counts:

* baseline: ``GET /t/o/<valid token>.gif``, the pixel (an HMAC, a journaled event, 42 bytes);
* ``GET /i/{id}?t=<valid token>``: a metadata lookup, the file read, a journaled ``open``;
* ``GET /i/{id}`` with a matching ``If-None-Match``: the lookup only, a 304;
* ``GET /i/{id}?variant=thumbnail``: the kept preview (made before measuring).

Tokens cycle over 1,000 recipients of one message. Only 127.0.0.1 is used; the server is
stopped in ``finally``.

    python bench/image_bench.py [--duration 3] [--connections 16] [--repeats 2]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import _common
import yaml
from _common import fmt_ratio, table
from http_bench import HOST, Server, free_port, start, stop
from PIL import Image

from core.config import SigningKey
from core.testing import base_document
from core.tokens import TokenCodec

TOKENS = 1000


def jpeg() -> bytes:
    image = Image.new("RGB", (600, 400))
    for x in range(600):
        for y in range(0, 400, 7):
            image.putpixel((x, y), (x % 256, y % 256, (x * y) % 256))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85)
    return out.getvalue()


def upload(server: Server, key: str, data: bytes) -> dict:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        f"{server.base}/v3/images",
        data=body,
        headers={
            "Authorization": f"Bearer {key}",
            "Content-Type": f"multipart/form-data; boundary={boundary}",
        },
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=10) as response:
        return dict(json.loads(response.read()))


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> int:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    match = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
    if match and status != 304:
        await reader.readexactly(int(match.group(1)))
    return status


async def closed_loop(
    port: int, requests: list[bytes], duration: float, connections: int
) -> dict[str, float]:
    """Each connection sends the next request as soon as the last is answered."""
    latencies: list[float] = []
    failures = 0
    deadline = time.perf_counter() + duration
    counter = 0

    async def worker() -> None:
        nonlocal failures, counter
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            while time.perf_counter() < deadline:
                counter += 1
                began = time.perf_counter()
                status = await asyncio.wait_for(
                    _exchange(reader, writer, requests[counter % len(requests)]), 5
                )
                latencies.append(time.perf_counter() - began)
                failures += not 200 <= status < 400
        finally:
            writer.close()

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.perf_counter() - began
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "requests": len(latencies),
        "p50": latencies[len(latencies) // 2] * 1e3,
        "p99": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] * 1e3,
        "failures": failures,
    }


def requests_for(paths: list[str], headers: str = "") -> list[bytes]:
    return [f"GET {p} HTTP/1.1\r\nHost: {HOST}\r\n{headers}\r\n".encode() for p in paths]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per measurement")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    duration = min(max(args.duration, 1.0), 60.0)
    repeats = min(max(args.repeats, 1), 5)

    tmp = Path(tempfile.mkdtemp(prefix="scaisend-image-bench-"))
    document = base_document(tmp / "data")
    document["server"]["sinks"] = [{"type": "database"}]
    api_key = document["tenants"]["acme"]["api_keys"][0]
    config_path = tmp / "scaisend.yaml"
    config_path.write_text(yaml.safe_dump(document))
    secret = document["server"]["signing_keys"][0]
    codec = TokenCodec([SigningKey(secret["id"], secret["secret"].encode())])
    message_id = uuid.uuid4().hex
    tokens = [codec.issue("acme", message_id, i) for i in range(TOKENS)]

    scaisend_bin = Path(sys.executable).parent / "scaisend"
    argv = [str(scaisend_bin), "--log-level", "warning", "serve", "--config", str(config_path)]
    port = free_port()
    server = start(
        "ScaiSend",
        [*argv, "--host", HOST, "--port", str(port)],
        port,
        tmp / "scaisend.log",
        {**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        image = upload(server, api_key, jpeg())
        image_id, etag = image["id"], f'"{image["content_hash"]}"'
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"{server.base}/i/{image_id}?variant=thumbnail", timeout=10) as r:
            thumbnail_size = len(r.read())

        kinds = {
            "pixel GET /t/o/<token>.gif (baseline)": requests_for(
                [f"/t/o/{t}.gif" for t in tokens]
            ),
            f"GET /i/<id>?t=<token> ({image['size']:,} bytes)": requests_for(
                [f"/i/{image_id}?t={t}" for t in tokens]
            ),
            "GET /i/<id> If-None-Match -> 304": requests_for(
                [f"/i/{image_id}"], f"If-None-Match: {etag}\r\n"
            ),
            f"GET /i/<id>?variant=thumbnail ({thumbnail_size:,} bytes)": requests_for(
                [f"/i/{image_id}?variant=thumbnail"]
            ),
        }
        best: dict[str, dict] = {}
        for _ in range(repeats):
            for name, requests in kinds.items():
                result = asyncio.run(closed_loop(server.port, requests, duration, args.connections))
                if name not in best or result["rps"] > best[name]["rps"]:
                    best[name] = result
        baseline = best[next(iter(kinds))]["rps"]
        print(
            f"Image proxy requests on {HOST}, one ScaiSend server, closed loop, "
            f"{args.connections} connections, {duration:g} s per run, best of {repeats}"
        )
        print()
        rows = [
            (
                name,
                f"{r['rps']:,.0f}",
                fmt_ratio(r["rps"] / baseline),
                f"{r['p50']:.2f}",
                f"{r['p99']:.2f}",
                f"{r['requests']:,}",
                r["failures"],
            )
            for name, r in best.items()
        ]
        print(
            table(
                ["request", "requests/s", "/ pixel", "p50 ms", "p99 ms", "requests", "non-2xx"],
                rows,
            )
        )
    finally:
        stop(server)
        shutil.rmtree(tmp, ignore_errors=True)
        print(_common.footer())


if __name__ == "__main__":
    main()
