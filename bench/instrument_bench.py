"""Single-message instrumentation over every corpus file: ScaiSend against pytracking.

For each HTML file under ../shared/corpus/html (read in place), one message for one recipient:

* ScaiSend, complete message: ``SendService.prepare`` (parse the send body, settings, the
  instrument pass, compile the MIME template, the recipient's token) and then
  ``next(service.outgoing(prepared)).data``, the recipient's whole RFC 5322 message in bytes.
* ScaiSend, HTML only: ``core.instrument.instrument`` over a ``Document`` and
  ``Template.stamp`` for one recipient (settings worked out once, outside the loop).
* pytracking 0.2.2: ``adapt_html`` (lxml parse, rewrite, ``tostring``), with unsigned base64
  JSON tokens (its default) and, for reference, with Fernet-encrypted tokens; and, as the peer
  of ScaiSend's complete message, ``adapt_html`` followed by the standard ``email`` package
  (``EmailMessage`` with the same headers, ``set_content`` of the tracked HTML,
  ``as_bytes(policy=SMTP)``).

Both sides run each configuration in the same process, interleaved round by round:
open tracking only, open + click tracking, then open + click + ganalytics (pytracking has no UTM
tagging: its side does open + click). The ratio is ScaiSend over pytracking with the same
features and its default (fastest, unsigned) tokens: the HTML against ``adapt_html``, the
complete message against ``adapt_html`` plus the ``email`` package. Last, the cost of the
worker thread each plugin call runs in is measured alone.

Run ``python bench/instrument_bench.py`` in the bench environment (``tox -e bench`` installs
pytracking[html,crypto]); ``--help`` for the knobs.
"""

from __future__ import annotations

import argparse
import email
import email.policy
import email.utils
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import _common
from _common import CONFIGS, fmt_rate, fmt_ratio, table

try:
    from pytracking import Configuration
    from pytracking.html import adapt_html
except ImportError:  # pragma: no cover - the bench env installs it
    sys.exit(
        "pytracking is not installed: run `tox -e bench`, or "
        "`.tox/bench/bin/python bench/instrument_bench.py` after `tox -e bench --notest`"
    )
from cryptography.fernet import Fernet

from core import logs
from core.instrument import instrument
from core.pipeline import Document, Recipient
from core.plugins import Implementation
from core.send.service import SendService
from core.testing import Harness

BASE = "https://track.example.test"
GOAL = 6.0
FULL = "ScaiSend complete message (prepare + MIME bytes)"
HTML_ONLY = "ScaiSend HTML only (instrument + stamp)"
PT_HTML = "pytracking adapt_html (unsigned tokens)"
PT_FULL = "pytracking adapt_html + email package (MIME bytes)"


def html_of(message: bytes) -> str:
    """The decoded HTML part of a complete message (quoted-printable breaks long URLs)."""
    part = email.message_from_bytes(message, policy=email.policy.default).get_body(("html",))
    return part.get_content() if part is not None else ""


@dataclass
class Side:
    name: str
    run: Callable[[int], object]  # file index -> output
    times: list[float]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20, help="most corpus passes per side")
    parser.add_argument("--budget", type=float, default=6.0, help="seconds per configuration")
    parser.add_argument(
        "--with-image-proxy",
        action="store_true",
        help="also load the image proxy plugin (on in the server; pytracking has no such pass)",
    )
    args = parser.parse_args()
    logs.configure("warning")

    files = _common.corpus_files()
    sources = [_common.read_html(f) for f in files]
    with tempfile.TemporaryDirectory(prefix="scaisend-bench-") as tmp:
        harness = Harness(Path(tmp), builtins=_common.tracking_plugins(args.with_image_proxy))
        runtime = harness.open_runtime()
        try:
            report(args, files, sources, runtime)
        finally:
            runtime.close()


def worker_thread_us(runtime, calls: int = 2000) -> float:
    """Microseconds per ``PluginHost.call_sync`` of an implementation that does nothing: the
    hand-over to the worker thread a message's ``instrument`` calls run in, measured alone."""
    noop = Implementation(plugin_name="noop", function=lambda: None, argnames=(), plugin=object())
    host = runtime.plugins.host
    start = time.perf_counter()
    for _ in range(calls):
        host.call_sync("instrument", noop)
    return (time.perf_counter() - start) / calls * 1e6


def report(args: argparse.Namespace, files: list[Path], sources: list[str], runtime) -> None:
    service = SendService(runtime)
    tenant = runtime.config.tenants["acme"]
    tokens = runtime.tokens
    base_url = runtime.config.tracking_base_url
    pt_plain = Configuration(
        base_open_tracking_url=f"{BASE}/t/o/", base_click_tracking_url=f"{BASE}/t/c/"
    )
    pt_fernet = Configuration(
        base_open_tracking_url=f"{BASE}/t/o/",
        base_click_tracking_url=f"{BASE}/t/c/",
        encryption_bytestring_key=Fernet.generate_key(),
    )

    # lxml refuses a str that carries an XML encoding declaration; pytracking accepts bytes too,
    # so such a file is handed over as bytes (what a caller of pytracking would do).
    pt_inputs: list[str | bytes] = []
    for source in sources:
        try:
            adapt_html(source, {}, configuration=pt_plain)
            pt_inputs.append(source)
        except ValueError:
            pt_inputs.append(source.encode("utf-8"))

    rows = []
    checks = []
    summary = {}
    for config_name, (tracking, pt_click) in CONFIGS.items():
        settings = runtime.effective_settings(tenant, tracking)

        def body(source: str, tracking=tracking) -> dict:
            return {
                "personalizations": [{"to": [{"email": "reader@example.com", "name": "Reader"}]}],
                "from": {"email": "news@example.com", "name": "Newsletter"},
                "subject": "This week's news",
                "content": [{"type": "text/html", "value": source}],
                "tracking_settings": tracking,
            }

        bodies = [body(s) for s in sources]

        def scaisend_full(i: int, bodies: list[dict] = bodies) -> bytes:
            prepared = service.prepare(tenant, bodies[i])
            return next(service.outgoing(prepared)).data

        def scaisend_html(i: int, settings=settings) -> str:
            message_id = uuid.uuid4().hex
            compiled, _ = instrument(
                runtime.plugins,
                Document(html=sources[i]),
                tenant=tenant,
                settings=settings,
                message_id=message_id,
                tracking_base_url=base_url,
                tokens=tokens,
            )
            recipient = Recipient(0, "reader@example.com", tokens.issue("acme", message_id, 0))
            return compiled.html.stamp(recipient)

        def pytracking_side(conf: Configuration, click: bool = pt_click) -> Callable[[int], str]:
            def run(index: int) -> str:
                metadata = {"tenant": "acme", "message_id": uuid.uuid4().hex, "recipient": 0}
                return adapt_html(
                    pt_inputs[index],
                    metadata,
                    click_tracking=click,
                    open_tracking=True,
                    configuration=conf,
                )

            return run

        def pytracking_message(index: int, click: bool = pt_click) -> bytes:
            """The peer's complete message: adapt_html, then the standard ``email`` package."""
            message_id = email.utils.make_msgid(domain="example.com")
            tracked = adapt_html(
                pt_inputs[index],
                {"tenant": "acme", "message_id": message_id, "recipient": 0},
                click_tracking=click,
                open_tracking=True,
                configuration=pt_plain,
            )
            if isinstance(tracked, bytes):
                tracked = tracked.decode("utf-8")
            msg = EmailMessage()
            msg["From"] = email.utils.formataddr(("Newsletter", "news@example.com"))
            msg["To"] = email.utils.formataddr(("Reader", "reader@example.com"))
            msg["Subject"] = "This week's news"
            msg["Message-ID"] = message_id
            msg["Date"] = email.utils.formatdate(usegmt=True)
            msg.set_content(tracked, subtype="html")
            return msg.as_bytes(policy=email.policy.SMTP)

        sides = [
            Side(FULL, scaisend_full, []),
            Side(HTML_ONLY, scaisend_html, []),
            Side(PT_HTML, pytracking_side(pt_plain), []),
            Side("pytracking adapt_html (Fernet tokens)", pytracking_side(pt_fernet), []),
            Side(PT_FULL, pytracking_message, []),
        ]

        # One warm-up pass, which is also the sanity check of what each side did.
        applied = service.prepare(tenant, bodies[0]).features
        counts = {}
        for side in sides:
            outputs = [side.run(i) for i in range(len(files))]
            text = [html_of(o) if isinstance(o, bytes) else o for o in outputs]
            counts[side.name] = (
                sum("/t/o/" in t for t in text),
                sum(t.count("/t/c/") for t in text),
                sum(t.count("utm_source") for t in text),
            )
        checks.append((config_name, applied, counts))

        deadline = time.perf_counter() + args.budget
        for _ in range(args.rounds):
            for side in sides:  # interleaved, so drift hits every side alike
                start = time.perf_counter()
                for i in range(len(files)):
                    side.run(i)
                side.times.append(time.perf_counter() - start)
            if time.perf_counter() > deadline:
                break

        baselines = {
            side.name: len(files) / statistics.median(side.times)
            for side in sides
            if side.name in (PT_HTML, PT_FULL)
        }
        features = f"ScaiSend: {', '.join(applied)}; pytracking: open" + (
            " + click" if pt_click else ""
        )
        for side in sides:
            rate = len(files) / statistics.median(side.times)
            rows.append(
                (
                    config_name,
                    side.name,
                    fmt_rate(rate),
                    f"{1e6 / rate:,.0f}",
                    fmt_ratio(rate / baselines[PT_FULL if side.name == FULL else PT_HTML]),
                    len(side.times),
                )
            )
            summary[(config_name, side.name)] = rate
        rows.append((config_name, f"  features on -> {features}", "", "", "", ""))

    print(
        f"Single-message instrumentation, {len(files)} corpus files "
        f"({sum(len(s) for s in sources) / 1024:,.0f} KiB of HTML) from {_common.CORPUS}"
    )
    print(
        f"pytracking handed bytes for {sum(isinstance(x, bytes) for x in pt_inputs)} file(s) "
        "(lxml refuses a str with an encoding declaration)"
    )
    print()
    print(
        table(
            ["config", "side", "msgs/s", "us/msg", "vs pytracking", "rounds"],
            rows,
            left=2,
        )
    )
    print()
    print(
        "ratio = side's msgs/s / pytracking's msgs/s with the same features and unsigned tokens:"
        " complete messages against adapt_html + the email package, everything else against"
        " adapt_html alone; median of the rounds, each round = every corpus file once"
    )
    print()
    print("What each side did in the warm-up pass (files with an open pixel, click URLs, UTM):")
    for config_name, _applied, counts in checks:
        for name, (opens, clicks, utm) in counts.items():
            print(
                f"  {config_name:<25} {name:<50} pixel in {opens}/{len(files)}, "
                f"{clicks} click URLs, {utm} utm_source"
            )
    print()
    for config_name in CONFIGS:
        for name, peer in ((HTML_ONLY, PT_HTML), (FULL, PT_FULL)):
            ratio = summary[(config_name, name)] / summary[(config_name, peer)]
            verdict = "met" if ratio >= GOAL else "MISSED"
            print(
                f"goal ScaiSend >= {GOAL:g}x pytracking [{config_name}, {name}]: "
                f"{fmt_ratio(ratio)} -> {verdict}"
            )
    thread_us = statistics.median(worker_thread_us(runtime) for _ in range(3))
    print(
        f"handing a plugin call to a worker thread alone (call_sync of a no-op, median of"
        f" 3 x 2,000): {thread_us:,.0f} us; a message hands all its features over once"
    )
    print(_common.footer())


if __name__ == "__main__":
    main()
