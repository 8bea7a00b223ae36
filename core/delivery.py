"""The sinks of ``scaisend serve``, fed from a process of their own that follows its journal.

Enriching events and writing them to a database is interpreter work; done by threads of the
server, it would hold the interpreter while requests wait. So ``serve`` only journals events
and starts this module as a child process (:class:`DeliveryProcess`), which reads the journal
as the server writes it and runs every configured sink exactly as an in-process bus would:
its own thread per sink, its own saved cursor, retries with backoff. The server empties the
journal once the child's saved cursors show every sink has taken it, and reads those cursors
for :meth:`EventBus.status`.

The child stops when the server closes its standard input (it ignores SIGINT and SIGTERM):
on a clean stop, after the server has answered its last request, it drains what is left (up
to ``drain_timeout`` seconds); when the server dies it does the same, and the next server's
child resumes from the saved cursors. The child takes the lock of a journal of its own (role
``deliver``), so a second one waits for the first to finish. A child that exits while the
server runs is started again.

    python -m core.delivery [--config FILE] [--log-level LEVEL]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import structlog

from core import logs
from core.config import Config
from core.enrichment import EventEnricher
from core.events import EventBus, JournalLocked, JournalReader
from core.runtime import Plugins, Runtime, load

log = structlog.get_logger("scaisend.delivery")

ROLE = "deliver"

POLL_SECONDS = 0.05
"""How often a caught-up sink of the child looks for new lines in the journal."""

LINGER_SECONDS = 0.2
"""How long a sink lets events gather before taking less than a full batch: fewer, larger
transactions cost the machine less, and nobody waits on this process."""

NICENESS = 10
"""The child yields the CPU to the server (and everything else) when both want it: a backlog
of events can wait, a response cannot."""


class DeliveryProcess:
    """The child process feeding the sinks, started again whenever it exits unasked."""

    def __init__(
        self,
        config_path: Path | None,
        log_level: str = "info",
        *,
        drain_timeout: float = 10.0,
        restart_delay: float = 1.0,
    ) -> None:
        self._argv = [sys.executable, "-m", "core.delivery", "--log-level", log_level]
        if config_path is not None:
            self._argv += ["--config", str(config_path)]
        self._argv += ["--drain-timeout", str(drain_timeout)]
        self._drain_timeout = drain_timeout
        self._restart_delay = restart_delay
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._process: subprocess.Popen[bytes] | None = None
        self._watcher: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        with self._lock:
            return self._process.pid if self._process is not None else None

    def start(self) -> None:
        with self._lock:
            self._spawn()
        self._watcher = threading.Thread(target=self._watch, name="delivery-watch", daemon=True)
        self._watcher.start()

    def stop(self) -> None:
        """Ask the child to drain and exit; kill it if it has not within the drain timeout."""
        self._stopping.set()
        with self._lock:
            process = self._process
        if process is None:
            return
        if process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()
        try:
            process.wait(self._drain_timeout + 5)
        except subprocess.TimeoutExpired:
            log.error("delivery.killed", pid=process.pid, after_s=self._drain_timeout + 5)
            process.kill()
            process.wait()
        if self._watcher is not None:
            self._watcher.join(timeout=5)

    def _spawn(self) -> None:
        # Its standard input is a pipe only this process writes to: closed on purpose or by
        # this process's death, it tells the child to finish.
        self._process = subprocess.Popen(self._argv, stdin=subprocess.PIPE)  # noqa: S603 - this interpreter, our module
        log.info("delivery.started", pid=self._process.pid)

    def _watch(self) -> None:
        while True:
            with self._lock:
                process = self._process
            assert process is not None
            code = process.wait()
            if self._stopping.is_set():
                return
            log.error(
                "delivery.exited", pid=process.pid, code=code, restart_in_s=self._restart_delay
            )
            if self._stopping.wait(self._restart_delay):
                return
            with self._lock:
                if self._stopping.is_set():
                    return
                if process.stdin is not None:
                    with contextlib.suppress(OSError):
                        process.stdin.close()
                self._spawn()


def _open_runtime(config: Config, plugins: Plugins, stop: threading.Event) -> Runtime | None:
    """The child's runtime, once an earlier child (still draining) has let go of the role."""
    while True:
        try:
            return Runtime.open(config, plugins, role=ROLE)
        except JournalLocked:
            if stop.wait(0.2):
                return None


def follow(config: Config, plugins: Plugins, stop: threading.Event, drain_timeout: float) -> None:
    """Feed the sinks of ``config`` from the server's journal until ``stop`` is set, then
    drain for up to ``drain_timeout`` seconds."""
    runtime = _open_runtime(config, plugins, stop)
    if runtime is None:
        return
    assert runtime.bus is not None
    own = runtime.bus  # holds the role's lock; its sinks are the ones configured
    bus = EventBus(
        JournalReader(config.data_dir / "journal", config.node_id),
        own.sinks,
        enrich=(enricher := EventEnricher(runtime.db)),
        read_ahead=enricher.overlaps_storing,
        linger=LINGER_SECONDS,
        poll_interval=POLL_SECONDS,
    )
    # As in the server: what start-up built (plugins, schemas, models) lives as long as the
    # process, so the collector's full sweeps leave it out; they took 30 to 40 ms each
    # otherwise, a CPU held that long while the server answers beside it.
    gc.collect()
    gc.freeze()
    bus.start()
    log.info("delivery.following", sinks=[sink.name for sink in bus.sinks])
    try:
        stop.wait()
    finally:
        started = time.monotonic()
        bus.stop(drain_timeout)  # drains, then closes the sinks
        own.journal.close()
        with contextlib.suppress(Exception):
            runtime.db.close()
        log.info("delivery.stopped", drained_in_s=round(time.monotonic() - started, 3))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m core.delivery", description=__doc__)
    parser.add_argument("--config", type=Path)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--drain-timeout", type=float, default=10.0)
    args = parser.parse_args(argv)
    logs.configure(args.log_level)
    os.nice(NICENESS)
    stop = threading.Event()
    # The server decides when this process ends: a terminal's Ctrl-C or a service manager's
    # SIGTERM reaches both, and the server closes the pipe once it has answered its last
    # request, so what it journaled meanwhile is delivered now rather than at the next start.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def watch_parent() -> None:
        # The raw descriptor, not sys.stdin: a thread blocked inside the buffered reader
        # holds its lock, which interpreter shutdown then cannot take.
        with contextlib.suppress(OSError):
            while os.read(0, 4096):
                pass
        stop.set()

    threading.Thread(target=watch_parent, name="parent-watch", daemon=True).start()
    plugins, config = load(args.config)
    follow(config, plugins, stop, args.drain_timeout)


if __name__ == "__main__":
    main()
