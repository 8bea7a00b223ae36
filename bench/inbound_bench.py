"""Bounce reports per second the inbound SMTP listener takes, over real SMTP sessions.

* ScaiSend: the listener as ``scaisend serve`` starts it, with ``plugins/inbound_dsn``: each
  report is parsed, attributed through its VERP address to a recorded copy, its address added
  to the tenant's bounce list and a ``bounce`` event made durable, all before the ``250``.
* Baseline, in the same run and the same process: aiosmtpd's own protocol on the same event
  loop with a handler that answers ``250`` at once (the SMTP cost alone).

Clients are ``smtplib`` sessions in threads (``--clients``), each sending its share of the
reports on one connection. SQLite in a temporary directory, with the server's pragmas.

Run ``python bench/inbound_bench.py`` (``--reports N``, default 400; ``--clients C``, default 4).
"""

from __future__ import annotations

import argparse
import asyncio
import smtplib
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import _common
import anyio
from _common import fmt_rate, fmt_ratio, table
from aiosmtpd.smtp import SMTP, Envelope, Session

from core import logs
from core.app import INBOUND
from core.send.verp import VerpCodec
from core.storage import Message, MessageRecipient
from core.testing import Harness

BOUNCES = "bounces.bench.test"


def report(verp: str, recipient: str) -> bytes:
    return (
        "From: MAILER-DAEMON@mx.example.net\r\n"
        f"To: {verp}\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n'
        "\r\n--B\r\nContent-Type: text/plain\r\n\r\nThe message could not be delivered.\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.example.net\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        f"Diagnostic-Code: smtp; 550 5.1.1 <{recipient}>: user unknown\r\n"
        "\r\n--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"From: news@example.org\r\nTo: {recipient}\r\nSubject: Hello\r\n\r\n--B--\r\n"
    ).encode()


def deliver(port: int, jobs: Sequence[tuple[str, bytes]], clients: int) -> float:
    """Send every ``(rcpt, data)`` over ``clients`` sessions; the seconds it took."""
    failures: list[str] = []

    def client(share: Sequence[tuple[str, bytes]]) -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as session:
            for rcpt, data in share:
                refused = session.sendmail("", [rcpt], data)
                if refused:
                    failures.append(str(refused))

    threads = [threading.Thread(target=client, args=(jobs[n::clients],)) for n in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    if failures:
        raise SystemExit(f"reports refused: {failures[:3]}")
    return elapsed


class Accept:
    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "250 OK"


async def baseline(jobs: Sequence[tuple[str, bytes]], clients: int) -> float:
    server = await asyncio.get_running_loop().create_server(
        lambda: SMTP(Accept()), host="127.0.0.1", port=0
    )
    try:
        port = server.sockets[0].getsockname()[1]
        return await anyio.to_thread.run_sync(deliver, port, jobs, clients)
    finally:
        server.close()
        await server.wait_closed()


async def scaisend(tmp: Path, count: int, clients: int) -> tuple[float, list[tuple[str, bytes]]]:
    harness = Harness(
        tmp,
        server={"bounce_domain": BOUNCES, "plugin_timeout_seconds": 30},
    )
    verp = VerpCodec(harness.config.signing_keys)
    jobs = []
    async with harness.serving():
        runtime = harness.runtime
        with runtime.db.connection_context(), runtime.db.atomic():
            for n in range(count):
                message_id = f"{n:032x}"
                Message.create(id=message_id, tenant="acme")
                MessageRecipient.create(message=message_id, number=0, email=f"r{n}@example.com")
                address = verp.address(message_id, 0, BOUNCES)
                jobs.append((address, report(address, f"r{n}@example.com")))
        port = harness.quart_app.extensions[INBOUND].port
        elapsed = await anyio.to_thread.run_sync(deliver, port, jobs, clients)
        listed = runtime.suppressions.page("acme", "bounce", limit=1)[1]
    if listed != count:
        raise SystemExit(f"expected {count} suppressed addresses, found {listed}")
    return elapsed, jobs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reports", type=int, default=400)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    logs.configure("warning", json=True)

    async def run() -> tuple[float, float]:
        with tempfile.TemporaryDirectory() as tmp:
            ours, jobs = await scaisend(Path(tmp), args.reports, args.clients)
        bare = await baseline(jobs, args.clients)
        return ours, bare

    ours, bare = anyio.run(run)
    rows = [
        ("baseline: aiosmtpd answering 250", fmt_rate(args.reports / bare), "1.00x"),
        (
            "ScaiSend (parse, attribute, suppress, event)",
            fmt_rate(args.reports / ours),
            fmt_ratio(bare / ours),
        ),
    ]
    print(f"{args.reports} bounce reports over {args.clients} SMTP sessions, SQLite")
    print()
    print(table(["server", "reports/s", "rate / baseline"], rows))
    print(_common.footer())


if __name__ == "__main__":
    main()
