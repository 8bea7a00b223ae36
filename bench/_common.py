"""Shared by the benchmarks: the corpus, the machine, the exact command, a plain-text table.

Not a benchmark itself (the leading underscore keeps it apart from ``bench/*_bench.py``).
"""

from __future__ import annotations

import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = (ROOT / ".." / "shared" / "corpus" / "html").resolve()

if str(ROOT) not in sys.path:  # `python bench/x.py` puts bench/, not the repo, on the path
    sys.path.insert(0, str(ROOT))


def tracking_plugins(with_image_proxy: bool) -> tuple[str, ...]:
    """Built-in plugins for the instrumentation benchmarks: the issue's features (open, click,
    ganalytics, and subscription, off unless asked) with or without the image proxy, which
    rewrites library images in every send and has no counterpart in the peer."""
    from core.plugins import DEFAULT_PLUGINS

    if with_image_proxy:
        return DEFAULT_PLUGINS
    return tuple(name for name in DEFAULT_PLUGINS if name.rpartition(".")[2] != "image_proxy")


def corpus_files(root: Path = CORPUS) -> list[Path]:
    """Every ``*.html`` under the corpus, in a stable order. Read in place, never copied."""
    files = sorted(root.rglob("*.html"))
    if not files:
        sys.exit(f"no corpus found under {root} (expected ../shared/corpus/html from the repo)")
    return files


def read_html(path: Path) -> str:
    return path.read_bytes().decode("utf-8", errors="replace")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> list[tuple[str, str]]:
    try:
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        load = "unknown"
    return [
        ("nproc", str(os.cpu_count())),
        ("load", f"{load} (1/5/15 min load average when the table was printed)"),
        ("cpu", cpu_model()),
        ("python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("platform", platform.platform()),
    ]


def command() -> str:
    """The command that ran this benchmark, as it can be typed again from the repo root."""
    script = Path(sys.argv[0]).resolve()
    try:
        shown = str(script.relative_to(ROOT))
    except ValueError:
        shown = str(script)
    return shlex.join(["python", shown, *sys.argv[1:]])


def relative(path: Path) -> str:
    try:
        return str(path.relative_to(CORPUS))
    except ValueError:
        return str(path)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], left: int = 1) -> str:
    """A Markdown table; the first ``left`` columns are text, the others right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        padded = [
            c.ljust(w) if i < left else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("| " + " | ".join(padded) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def footer() -> str:
    lines = ["", "machine:"]
    lines += [f"  {k:<9} {v}" for k, v in machine()]
    lines.append(f"command:  {command()}")
    return "\n".join(lines)


def best_of(fn: Callable[[], float], rounds: int, budget: float) -> list[float]:
    """Call ``fn`` (which returns the seconds one round took) at least once and at most
    ``rounds`` times, stopping early once ``budget`` seconds have passed."""
    results: list[float] = []
    deadline = time.perf_counter() + budget
    for _ in range(rounds):
        results.append(fn())
        if time.perf_counter() > deadline:
            break
    return results


def fmt_rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def fmt_ratio(value: float) -> str:
    return f"{value:.1f}x" if value >= 10 else f"{value:.2f}x"


GANALYTICS = {
    "enable": True,
    "utm_source": "newsletter",
    "utm_medium": "email",
    "utm_campaign": "spring sale",
}
CONFIGS = {
    # name: (ScaiSend tracking_settings, pytracking click_tracking). pytracking has no UTM
    # tagging, so its side of the last row is open + click, the most it does.
    "open only": ({"click_tracking": {"enable": False}}, False),
    "open + click": ({}, True),
    "open + click + ganalytics": ({"ganalytics": GANALYTICS}, True),
}
"""The feature sets the instrumentation and batch benchmarks compare, in the same order."""
