"""Bounce and complaint parsing over every message of ../shared/corpus/bounces (read in place).

Two parsers run over the same messages, held in memory, interleaved round by round:

* ScaiSend: ``plugins.inbound_dsn.parse.parse_message`` (the whole job: MIME, DSN fields,
  plain-text notices, reasons, the returned message's headers).
* Baseline, the standard library alone: ``email.message_from_bytes`` and the recipient fields
  of every ``message/delivery-status`` part (what the corpus scorer's ``stdlib`` baseline reads).

The figure is messages per second, the best round of each; the ratio is ScaiSend over the
baseline. Run ``python bench/inbound_bench.py`` from the repo root; ``--help`` for the knobs.
"""

from __future__ import annotations

import argparse
import email
import email.message
import email.policy
import sys
import time
from collections.abc import Callable
from pathlib import Path

import _common
from _common import fmt_rate, fmt_ratio, table

from plugins.inbound_dsn.parse import parse_message

BOUNCES = (_common.ROOT / ".." / "shared" / "corpus" / "bounces" / "corpus").resolve()


def messages(root: Path = BOUNCES) -> list[bytes]:
    files = sorted(root.rglob("*.eml"))
    if not files:
        sys.exit(f"no corpus found under {root} (expected ../shared/corpus/bounces from the repo)")
    return [path.read_bytes() for path in files]


def stdlib_parse(raw: bytes) -> list[str]:
    """The baseline: recipients named by the delivery-status parts, nothing else."""
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    found = []
    for part in msg.walk():
        if part.get_content_type() != "message/delivery-status":
            continue
        payload = part.get_payload()
        blocks = payload if isinstance(payload, list) else []
        for block in blocks:
            if isinstance(block, email.message.Message):
                recipient = block.get("final-recipient") or block.get("original-recipient")
                if recipient:
                    found.append(str(recipient))
    return found


def one_round(parse: Callable[[bytes], object], corpus: list[bytes]) -> float:
    started = time.perf_counter()
    for raw in corpus:
        parse(raw)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds per parser (default 5)")
    parser.add_argument("--budget", type=float, default=20.0, help="seconds before stopping")
    args = parser.parse_args()

    corpus = messages()
    ours: list[float] = []
    baseline: list[float] = []
    deadline = time.perf_counter() + args.budget
    for _ in range(max(1, args.rounds)):
        baseline.append(one_round(stdlib_parse, corpus))
        ours.append(one_round(parse_message, corpus))
        if time.perf_counter() > deadline:
            break
    ours_rate = len(corpus) / min(ours)
    base_rate = len(corpus) / min(baseline)
    print(f"{len(corpus)} messages from {BOUNCES}, best of {len(ours)} rounds each\n")
    print(
        table(
            ["parser", "messages/s", "vs stdlib"],
            [
                [
                    "stdlib (message_from_bytes + delivery-status fields)",
                    fmt_rate(base_rate),
                    "1.00x",
                ],
                ["ScaiSend parse_message", fmt_rate(ours_rate), fmt_ratio(ours_rate / base_rate)],
            ],
        )
    )
    print(_common.footer())


if __name__ == "__main__":
    main()
