"""What subscription tracking adds to a 10,000-recipient send, beside the same send without it.

* Stamping: ``SendService.prepare`` once, then every recipient's message bytes, for one corpus
  newsletter with open + click tracking; measured with subscription tracking on (footer in both
  bodies, List-Unsubscribe with a mailto, List-Unsubscribe-Post) and, as the baseline in the
  same run, off.
* Screening: the suppression check ``deliver`` runs before handing copies to the transport
  (``runtime.suppressions.screen`` over the 10,000 addresses, 1,000 of them listed, one group),
  on SQLite, beside the baseline of stamping the same 10,000 copies.

Run ``python bench/subscription_bench.py`` (``--recipients N`` for another size).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import _common
from _common import best_of, fmt_rate, fmt_ratio, table

from core.send.service import PreparedSend, SendService
from core.testing import Harness, random_secret

NEWSLETTER = "leemunroe__responsive-html-email-template/email.html"


def newsletter() -> str:
    return _common.read_html(_common.CORPUS / NEWSLETTER)


def body(html: str, recipients: int) -> dict[str, Any]:
    per = max(1, -(-recipients // 1000))
    return {
        # At most 1,000 personalizations a send: 10,000 recipients are 1,000 of 10 each.
        "personalizations": [
            {"to": [{"email": f"reader{n}@example.com"} for n in range(start, start + per)]}
            for start in range(0, recipients, per)
        ],
        "from": {"email": "news@example.org"},
        "subject": "Newsletter",
        "content": [
            {"type": "text/plain", "value": "Read it in HTML."},
            {"type": "text/html", "value": html},
        ],
        "asm": {"group_id": 1},
    }


def stamp_seconds(service: SendService, prepared: PreparedSend) -> float:
    started = time.perf_counter()
    for message in service.outgoing(prepared):
        _ = message.data
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipients", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    html = newsletter()
    tracking = {"open_tracking": {"enable": True}, "click_tracking": {"enable": True}}
    with tempfile.TemporaryDirectory() as tmp:
        harness = Harness(
            Path(tmp),
            tenants={
                "acme": {
                    "api_keys": ["acme-" + random_secret()],
                    "tracking": tracking,
                    "plugins": {
                        "subscription_tracking": {"unsubscribe_mailbox": "unsub@example.org"}
                    },
                }
            },
        )
        runtime = harness.open_runtime()
        try:
            service = SendService(runtime)
            tenant = harness.config.tenants["acme"]
            rows = []
            timings: dict[str, float] = {}
            for label, enabled in (
                ("subscription off (baseline)", False),
                ("subscription on", True),
            ):
                payload = body(html, args.recipients)
                payload["tracking_settings"] = {"subscription_tracking": {"enable": enabled}}
                prepared = service.prepare(tenant, payload)
                runs = best_of(lambda p=prepared: stamp_seconds(service, p), args.rounds, 30)
                timings[label] = statistics.median(runs)
            base = timings["subscription off (baseline)"]
            for label, seconds in timings.items():
                rows.append(
                    [
                        f"stamp, {label}",
                        fmt_rate(args.recipients / seconds),
                        fmt_ratio(seconds / base),
                    ]
                )

            addresses = [f"reader{n}@example.com" for n in range(args.recipients)]
            for n in range(0, args.recipients, 10):
                runtime.suppressions.add("acme", addresses[n], "unsubscribe")
            for n in range(5, args.recipients, 100):
                runtime.suppressions.add("acme", addresses[n], "group_unsubscribe", group_id=1)

            def screen() -> float:
                started = time.perf_counter()
                runtime.suppressions.screen(
                    "acme", addresses, group_id=1, bypasses=lambda flag: False
                )
                return time.perf_counter() - started

            screening = statistics.median(best_of(screen, args.rounds, 30))
            rows.append(
                [
                    "screen (SQLite, 1,100 listed)",
                    fmt_rate(args.recipients / screening),
                    fmt_ratio(screening / base),
                ]
            )
        finally:
            runtime.close()
    print(f"{args.recipients:,} recipients, {NEWSLETTER}, open + click tracking\n")
    print(table(["step", "recipients/s", "time vs stamping without subscription"], rows))
    print(_common.footer())


if __name__ == "__main__":
    main()
