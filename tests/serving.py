"""A real ``scaisend serve`` subprocess, for tests whose behaviour depends on real sockets."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import IO, Self, TypeVar

import httpx

T = TypeVar("T")

DEADLINE_SECONDS = 30.0
"""How long a wait lasts unless the caller asks for longer: server start, stop and polling."""

POLL_SECONDS = 0.05

# Set by a developer's shell or a deployment; a test server takes its settings from the test only.
OUTSIDE_SETTINGS = ("SCAISEND_CONFIG", "TRACKING_BASE_URL")


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scaisend_executable() -> str:
    """The ``scaisend`` console script installed beside the running interpreter."""
    found = shutil.which("scaisend", path=str(Path(sys.executable).parent))
    assert found, "the scaisend console script is not installed"
    return found


def serve_environment() -> dict[str, str]:
    """This process's environment without plugin autoloading or outside scaisend settings."""
    env = {**os.environ, "SCAISEND_DISABLE_PLUGIN_AUTOLOAD": "1"}
    for name in OUTSIDE_SETTINGS:
        env.pop(name, None)
    return env


def wait_for(condition: Callable[[], T | None], what: str, timeout: float = DEADLINE_SECONDS) -> T:
    """Poll ``condition`` until it returns something truthy, and return that; fail at timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(POLL_SECONDS)
    raise AssertionError(f"timed out waiting for {what}")


class ScaisendServer:
    """``scaisend serve ARGUMENTS --port PORT`` as a context manager.

    Entering starts the server and returns once ``/health`` on the loopback address answers
    200; leaving sends SIGTERM and kills the server if it has not exited after the deadline
    (which fails the test: a server must stop when told to).  Standard error is kept so that
    a server that exits early is reported with what it said.
    """

    process: subprocess.Popen[bytes]
    _stderr: IO[bytes]

    def __init__(
        self,
        *arguments: str,
        port: int | None = None,
        cwd: Path | None = None,
        ready_timeout: float = DEADLINE_SECONDS,
    ) -> None:
        self.arguments = arguments
        self.port = free_port() if port is None else port
        self.base = f"http://127.0.0.1:{self.port}"
        self.cwd = cwd
        self.ready_timeout = ready_timeout
        self._running = ExitStack()

    def __enter__(self) -> Self:
        with ExitStack() as starting:
            self._stderr = starting.enter_context(tempfile.TemporaryFile())
            self.process = subprocess.Popen(
                [scaisend_executable(), "serve", *self.arguments, "--port", str(self.port)],
                cwd=self.cwd,
                env=serve_environment(),
                stdout=subprocess.DEVNULL,
                stderr=self._stderr,
            )
            starting.callback(self.stop)
            wait_for(self.healthy, "the server to answer /health", self.ready_timeout)
            self._running = starting.pop_all()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._running.close()

    def stderr(self) -> str:
        """What the server has written to standard error so far."""
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def assert_running(self) -> None:
        """Fail with the server's standard error if it has exited."""
        code = self.process.poll()
        assert code is None, f"scaisend serve exited with {code}:\n{self.stderr()}"

    def healthy(self) -> bool:
        """Whether ``/health`` answers 200 now; fails if the server has exited."""
        self.assert_running()
        try:
            return httpx.get(f"{self.base}/health", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=DEADLINE_SECONDS)

    def stop(self) -> None:
        """SIGTERM and wait; a server still running at the deadline is killed and the test fails."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=DEADLINE_SECONDS)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"scaisend serve did not stop within {DEADLINE_SECONDS:g} s of SIGTERM"
            ) from None
