"""Running a plugin worker thread on the CPU of the thread that waits for it.

A plugin call runs on a worker thread while the caller waits, so the two never run at once.
Waking a thread that sleeps on another CPU costs several times a wake-up on the waker's own
CPU (tens of microseconds on virtual machines, where an idle CPU is halted in the hypervisor),
which is more than many plugins' whole call. The scheduler would also move the waiting caller
to the idle CPU the moment the worker runs. So for the length of a hand-over the caller is
held on its CPU, and the worker is pinned to the same one until it wakes there; it then lets
itself go to every CPU before running any plugin code, so a thread a plugin starts is not
confined to one CPU, and the caller's own affinity is restored when the call returns.

Linux only (``sched_getcpu`` and per-thread ``sched_setaffinity``); elsewhere, on a single
allowed CPU, or when the kernel refuses, threads run wherever the scheduler puts them.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Callable
from typing import NamedTuple

import structlog

log = structlog.get_logger("scaisend.affinity")


def _load_getcpu() -> Callable[[], int] | None:
    if not hasattr(os, "sched_setaffinity"):
        return None
    try:
        function = ctypes.CDLL(None).sched_getcpu
    except (AttributeError, OSError):
        return None
    function.restype = ctypes.c_int
    function.argtypes = []
    return function


class Hold(NamedTuple):
    """The CPU a caller is held on, and the affinity it had before."""

    cpu: int
    before: frozenset[int]


class CpuSharing:
    """Holds a calling thread on its CPU and pins the worker it waits for to the same one."""

    def __init__(self) -> None:
        self._getcpu = _load_getcpu()
        self._allowed = frozenset(os.sched_getaffinity(0)) if self._getcpu else frozenset()
        self.enabled = len(self._allowed) > 1

    def hold(self) -> Hold | None:
        """Keep the calling thread on the CPU it is on until :meth:`restore`; ``None`` when
        there is nothing to gain (one allowed CPU) or pinning is off."""
        if not self.enabled or self._getcpu is None:
            return None
        before = frozenset(os.sched_getaffinity(0))
        cpu = self._getcpu()
        if len(before) < 2 or cpu not in before:
            return None
        try:
            os.sched_setaffinity(0, {cpu})
        except OSError as exc:  # a seccomp policy or a cpuset changed under the process
            self._disable(exc)
            return None
        return Hold(cpu, before)

    def pin(self, native_id: int, hold: Hold | None) -> bool:
        """Pin thread ``native_id`` to the held caller's CPU, so that it wakes there; whether
        it is pinned (it must then :meth:`let_go` once awake)."""
        if hold is None:
            return False
        try:
            os.sched_setaffinity(native_id, {hold.cpu})
        except OSError as exc:
            self._disable(exc)
            return False
        return True

    def let_go(self) -> None:
        """Let the calling thread run on every CPU the process started with again."""
        # Refused (a cpuset changed under the process): it stays where it is, which is allowed.
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, self._allowed)

    def restore(self, hold: Hold | None) -> None:
        """Give the calling thread back the affinity it had before :meth:`hold`."""
        if hold is not None:
            try:
                os.sched_setaffinity(0, hold.before)
            except OSError as exc:  # a CPU it had went offline: any allowed one will do
                log.info("affinity.restore_failed", error=str(exc))
                self.let_go()

    def _disable(self, exc: OSError) -> None:
        if self.enabled:
            self.enabled = False
            log.info("affinity.disabled", error=str(exc))
