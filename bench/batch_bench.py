"""A 10,000-recipient send of one corpus newsletter, to complete MIME messages: recipients/s.

* ScaiSend: ``SendService.prepare`` once (parse, settings, one instrument pass, MIME templates,
  10,000 tokens), then every recipient's message bytes from ``service.outgoing(prepared)``.
  No transport is called (the runtime has the default outbox transport; nothing is delivered).
  A send takes at most 1,000 personalizations, so 10,000 recipients in ONE send are 1,000
  personalizations of 10 ``to`` addresses each (every copy's To: header lists those 10).
  A second shape, closer to how a newsletter is addressed, is 10 sends of 1,000
  personalizations with one ``to`` each (10 prepares, every copy addressed to one reader).
* Baseline, per recipient: pytracking's ``adapt_html`` for that recipient, then the standard
  ``email`` package: ``EmailMessage`` with From/To/Subject/Message-ID/Date, ``set_content``
  (the text part) and ``add_alternative`` (the tracked HTML), ``as_bytes(policy=SMTP)``.

Both sides send the same multipart/alternative message (the same plain-text part, untracked on
both sides, and the HTML), with the same features: open + click tracking, then open only.
The baseline is slow, so it runs for ``--baseline-seconds`` (or all 10,000 with
``--baseline-all``) and its rate is recipients done over the time they took.

Run ``python bench/batch_bench.py`` in the bench environment (``tox -e bench``).
"""

from __future__ import annotations

import argparse
import email.policy
import email.utils
import html as html_lib
import re
import statistics
import sys
import tempfile
import time
from email import message_from_bytes
from email.message import EmailMessage
from pathlib import Path

import _common
from _common import CONFIGS, fmt_rate, fmt_ratio, table

try:
    from pytracking import Configuration
    from pytracking.html import adapt_html
except ImportError:  # pragma: no cover - the bench env installs it
    sys.exit("pytracking is not installed: run `tox -e bench` (its deps install it)")

from core import logs
from core.send.service import SendService
from core.testing import Harness

DEFAULT_FILE = "mailchimp__email-blueprints/responsive-templates__base_boxed_3column_query.html"
RECIPIENTS = 10_000
GOAL = 40.0
SENDER = ("Newsletter", "news@example.com")
SUBJECT = "This month's newsletter"
BASE = "https://track.example.test"


def plain_text(source: str) -> str:
    """A crude text alternative of the newsletter (the same one for both sides)."""
    source = re.sub(r"(?is)<(style|script|head)\b.*?</\1\s*>", " ", source)
    text = html_lib.unescape(re.sub(r"(?s)<[^>]*>", " ", source))
    lines = (" ".join(line.split()) for line in text.splitlines())
    return "\n".join(line for line in lines if line) + "\n"


def address(i: int) -> dict[str, str]:
    return {"email": f"reader{i:05d}@example.com", "name": f"Reader {i}"}


def send_bodies(html: str, text: str, tracking: dict, shape: str) -> list[dict]:
    common = {
        "from": {"email": SENDER[1], "name": SENDER[0]},
        "subject": SUBJECT,
        "content": [{"type": "text/plain", "value": text}, {"type": "text/html", "value": html}],
        "tracking_settings": tracking,
    }
    if shape == "one":  # one send: 1,000 personalizations x 10 to
        return [
            {
                **common,
                "personalizations": [
                    {"to": [address(p * 10 + k) for k in range(10)]}
                    for p in range(RECIPIENTS // 10)
                ],
            }
        ]
    return [  # 10 sends x 1,000 personalizations x 1 to
        {**common, "personalizations": [{"to": [address(s * 1000 + p)]} for p in range(1000)]}
        for s in range(RECIPIENTS // 1000)
    ]


def run_scaisend(service: SendService, tenant, bodies: list[dict]) -> dict:
    """Prepare each body and render every copy's bytes; seconds and sizes."""
    prepare = render = 0.0
    count = size = 0
    sample = b""
    for body in bodies:
        start = time.perf_counter()
        prepared = service.prepare(tenant, body)
        middle = time.perf_counter()
        for message in service.outgoing(prepared):
            count += 1
            size += len(message.data)
            if not sample:
                sample = message.data
        render += time.perf_counter() - middle
        prepare += middle - start
    return {"prepare": prepare, "render": render, "count": count, "size": size, "sample": sample}


def baseline_message(html: str, text: str, i: int, click: bool, conf: Configuration) -> bytes:
    message_id = email.utils.make_msgid(domain="example.com")
    tracked = adapt_html(
        html,
        {"message_id": message_id, "recipient": i},
        click_tracking=click,
        open_tracking=True,
        configuration=conf,
    )
    reader = address(i)
    msg = EmailMessage()
    msg["From"] = email.utils.formataddr(SENDER)
    msg["To"] = email.utils.formataddr((reader["name"], reader["email"]))
    msg["Subject"] = SUBJECT
    msg["Message-ID"] = message_id
    msg["Date"] = email.utils.formatdate(usegmt=True)
    msg.set_content(text)
    msg.add_alternative(tracked, subtype="html")
    return msg.as_bytes(policy=email.policy.SMTP)


def run_baseline(
    html: str, text: str, click: bool, conf: Configuration, seconds: float, everything: bool
) -> dict:
    count = size = 0
    sample = b""
    start = time.perf_counter()
    deadline = start + seconds
    for i in range(RECIPIENTS):
        data = baseline_message(html, text, i, click, conf)
        count += 1
        size += len(data)
        sample = sample or data
        if not everything and time.perf_counter() > deadline:
            break
    return {"seconds": time.perf_counter() - start, "count": count, "size": size, "sample": sample}


def describe(data: bytes) -> str:
    """What one message holds: its parts, and the tracking in its HTML."""
    message = message_from_bytes(data, policy=email.policy.default)
    part = message.get_body(preferencelist=("html",))
    body = part.get_content() if part is not None else ""
    kinds = "+".join(p.get_content_type() for p in message.walk() if not p.is_multipart())
    return (
        f"{kinds}, To: {len(message.get_all('To', [''])[0].split('@')) - 1} address(es), "
        f"pixel: {'/t/o/' in body}, click URLs: {body.count('/t/c/')}, "
        f"utm_source: {body.count('utm_source')}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--file", default=DEFAULT_FILE, help="corpus file, relative to corpus")
    parser.add_argument("--rounds", type=int, default=3, help="ScaiSend runs per shape (median)")
    parser.add_argument("--baseline-seconds", type=float, default=15.0)
    parser.add_argument("--baseline-all", action="store_true", help="all 10,000 baseline copies")
    parser.add_argument(
        "--with-image-proxy",
        action="store_true",
        help="also load the image proxy plugin (on in the server; pytracking has no such pass)",
    )
    args = parser.parse_args()
    logs.configure("warning")

    path = _common.CORPUS / args.file
    html = _common.read_html(path)
    text = plain_text(html)
    conf = Configuration(
        base_open_tracking_url=f"{BASE}/t/o/", base_click_tracking_url=f"{BASE}/t/c/"
    )
    rows = []
    notes = []
    verdicts = []
    with tempfile.TemporaryDirectory(prefix="scaisend-bench-") as tmp:
        harness = Harness(Path(tmp), builtins=_common.tracking_plugins(args.with_image_proxy))
        runtime = harness.open_runtime()
        try:
            service = SendService(runtime)
            tenant = runtime.config.tenants["acme"]
            assert runtime.config.transport["type"] == "outbox"  # and it is never called
            for config_name, (tracking, click) in CONFIGS.items():
                baseline = run_baseline(
                    html, text, click, conf, args.baseline_seconds, args.baseline_all
                )
                base_rate = baseline["count"] / baseline["seconds"]
                for shape, label in (
                    ("one", "ScaiSend, 1 send (1,000 pers. x 10 to)"),
                    ("ten", "ScaiSend, 10 sends (1,000 pers. x 1 to)"),
                ):
                    bodies = send_bodies(html, text, tracking, shape)
                    runs = []
                    deadline = time.perf_counter() + 60
                    for _ in range(max(1, args.rounds)):
                        runs.append(run_scaisend(service, tenant, bodies))
                        if time.perf_counter() > deadline:
                            break
                    result = sorted(runs, key=lambda r: r["prepare"] + r["render"])[len(runs) // 2]
                    total = result["prepare"] + result["render"]
                    rate = result["count"] / total
                    rows.append(
                        (
                            config_name,
                            label,
                            f"{result['count']:,}",
                            fmt_rate(rate),
                            f"{1e6 / rate:,.1f}",
                            f"{result['prepare']:.2f} s + {result['render']:.2f} s",
                            f"{result['size'] / result['count'] / 1024:,.1f}",
                            fmt_ratio(rate / base_rate),
                        )
                    )
                    verdicts.append((config_name, label, rate / base_rate))
                    notes.append(
                        (
                            config_name,
                            label,
                            describe(result["sample"]),
                            len(runs),
                            statistics.median(r["render"] for r in runs) / result["count"] * 1e6,
                        )
                    )
                rows.append(
                    (
                        config_name,
                        "pytracking + email, per recipient",
                        f"{baseline['count']:,}",
                        fmt_rate(base_rate),
                        f"{1e6 / base_rate:,.1f}",
                        f"{baseline['seconds']:.2f} s",
                        f"{baseline['size'] / baseline['count'] / 1024:,.1f}",
                        "1.00x",
                    )
                )
                notes.append(
                    (
                        config_name,
                        "pytracking + email, per recipient",
                        describe(baseline["sample"]),
                        1,
                        None,
                    )
                )
        finally:
            runtime.close()

    print(
        f"10,000-recipient send of {_common.relative(path)} "
        f"({len(html.encode()) / 1024:,.1f} KiB HTML + {len(text.encode()) / 1024:,.1f} KiB "
        "text), complete MIME messages in bytes, no delivery"
    )
    print()
    print(
        table(
            [
                "features",
                "side",
                "recipients",
                "recipients/s",
                "us/recipient",
                "time (prepare + render)",
                "KiB/msg",
                "vs baseline",
            ],
            rows,
            left=2,
        )
    )
    print()
    print(
        "ScaiSend figures: median of the runs; the baseline ran over the recipients shown "
        + (
            "(all of them)."
            if args.baseline_all
            else f"(time-bounded to {args.baseline_seconds:g} s; --baseline-all runs all 10,000)."
        )
    )
    print(
        "Features: ScaiSend open_tracking (+ click_tracking) in HTML, text part untracked; "
        "pytracking open (+ click) in HTML, text part untracked."
    )
    print()
    print("One message from each side, parsed back:")
    for config_name, label, what, runs, render_us in notes:
        extra = f"; {runs} run(s), render alone {render_us:.1f} us/copy" if render_us else ""
        print(f"  {config_name:<25} {label:<42} {what}{extra}")
    print()
    for config_name, label, ratio in verdicts:
        print(
            f"goal >= {GOAL:g}x [{config_name}, {label}]: {fmt_ratio(ratio)} -> "
            f"{'met' if ratio >= GOAL else 'MISSED'}"
        )
    print(_common.footer())


if __name__ == "__main__":
    main()
