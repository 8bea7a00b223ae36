"""Building the plugin manager, and calling hooks with each plugin isolated from the others."""

from __future__ import annotations

import _thread
import importlib
import inspect
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import pluggy
import structlog

from core import hookspecs
from core.affinity import CpuSharing
from core.features import Feature

log = structlog.get_logger("scaisend.plugins")

FEATURE_PLUGINS: tuple[str, ...] = (
    "plugins.open_tracking",
    "plugins.click_tracking",
    "plugins.ganalytics",
    "plugins.subscription",
    "plugins.image_proxy",
)
SINK_PLUGINS: tuple[str, ...] = ("sinks.database", "sinks.jsonl", "sinks.log")
TRANSPORT_PLUGINS: tuple[str, ...] = ("plugins.outbox", "plugins.smtp_relay")
INBOUND_PLUGINS: tuple[str, ...] = ("plugins.inbound_dsn",)
INFRASTRUCTURE_PLUGINS: tuple[str, ...] = SINK_PLUGINS + TRANSPORT_PLUGINS + INBOUND_PLUGINS
"""What a server needs whatever features it runs: sinks, transports, bounce processing."""
DEFAULT_PLUGINS: tuple[str, ...] = FEATURE_PLUGINS + INFRASTRUCTURE_PLUGINS
"""Built-in plugins, by module name. Core never imports them any other way."""

AUTOLOAD_ENV = "SCAISEND_DISABLE_PLUGIN_AUTOLOAD"
"""Set to a non-empty value to skip third-party plugins from the ``scaisend`` entry points."""

DEFAULT_BUDGET = 2.0


def build_plugin_manager(
    builtins: Sequence[str] = DEFAULT_PLUGINS,
    *,
    autoload: bool | None = None,
    extra: Iterable[object] = (),
) -> pluggy.PluginManager:
    """A fresh manager: built-in modules, then entry-point plugins, then ``extra`` objects.

    ``autoload`` defaults to on unless :data:`AUTOLOAD_ENV` is set. Tests pass exactly the
    plugins they need with ``builtins=()`` and ``extra=[...]``.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for name in builtins:
        pm.register(importlib.import_module(name), name=name)
    if autoload is None:
        autoload = not os.environ.get(AUTOLOAD_ENV)
    if autoload:
        pm.load_setuptools_entrypoints(hookspecs.PROJECT)
    for plugin in extra:
        pm.register(plugin)
    pm.check_pending()
    return pm


class _Worker:
    """A thread that runs one call at a time, handed to it through a queue."""

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        thread = threading.Thread(target=self._serve, name="plugin-call", daemon=True)
        thread.start()
        assert thread.native_id is not None  # set before start() returns
        self.native_id = thread.native_id

    def _serve(self) -> None:
        while True:
            self.jobs.get()()


class _Workers:
    """Reusable threads for plugin calls: starting a thread per call costs more than many
    plugins' work. A worker whose call overruns is abandoned to it and never handed another."""

    IDLE_LIMIT = 32

    def __init__(self) -> None:
        self._idle: list[_Worker] = []
        self._lock = threading.Lock()
        self._cpus = CpuSharing()

    def run_steps(
        self,
        calls: Sequence[Callable[[], Any]],
        then: Callable[[int, Any], None] | None,
        budget: float,
    ) -> tuple[list[tuple[bool, Any] | None], int | None]:
        """Run ``calls`` in order on one worker, each within ``budget`` seconds, handing the
        worker over once rather than once per call. After each call that returns, ``then(i,
        result)`` runs on the worker before the next call starts (an exception from it counts
        as the call's failure).

        Returns each call's outcome and the index of the call that overran, if one did: the
        worker is then abandoned, that call's outcome is ``None`` and the calls after it were
        not started. A late result of the abandoned call never reaches ``then``.
        """
        count = len(calls)
        outcomes: list[tuple[bool, Any] | None] = [None] * count
        state = threading.Lock()  # guards ``current``, ``started`` and ``abandoned``
        current = [0]  # the index of the call under way (``count`` once all returned)
        started = [time.monotonic()]  # when it started
        abandoned = False
        # A bare lock, released once by the worker, is the cheapest wake-up the main thread
        # can wait on (an Event allocates a condition per wait).
        finished = _thread.allocate_lock()
        finished.acquire()

        with self._lock:
            worker = self._idle.pop() if self._idle else None
        if worker is None:
            worker = _Worker()
        # The caller only waits while the worker runs: sharing one CPU makes both wake-ups
        # cheap (core/affinity.py). Taken after the worker exists, which must not inherit it.
        cpus = self._cpus
        held = cpus.hold()
        pinned = cpus.pin(worker.native_id, held)

        def job() -> None:
            if pinned:
                cpus.let_go()  # awake on the caller's CPU, which was all the pinning was for
            try:
                for index, call in enumerate(calls):
                    with state:
                        if abandoned:
                            return
                        current[0], started[0] = index, time.monotonic()
                    try:
                        outcome: tuple[bool, Any] = (True, call())
                    except BaseException as exc:  # noqa: BLE001 - every plugin failure is isolated
                        outcome = (False, exc)
                    with state:
                        if abandoned:
                            return
                        if outcome[0] and then is not None:
                            try:
                                then(index, outcome[1])
                            except BaseException as exc:  # noqa: BLE001 - as above
                                outcome = (False, exc)
                        outcomes[index] = outcome
                with state:
                    current[0] = count
            finally:
                finished.release()

        worker.jobs.put(job)
        try:
            while True:
                with state:
                    index, since = current[0], started[0]
                remaining = since + budget - time.monotonic()
                if remaining > 0 and finished.acquire(timeout=remaining):
                    break
                with state:
                    if current[0] == count:  # done just as the wait ran out
                        break
                    if current[0] != index or time.monotonic() - started[0] < budget:
                        continue  # the worker moved on to a later call: wait for that one
                    abandoned = True
                return outcomes, index
        finally:
            cpus.restore(held)
        with self._lock:
            if len(self._idle) < self.IDLE_LIMIT:
                self._idle.append(worker)
        return outcomes, None


_WORKERS = _Workers()


def _shifted(then: Callable[[int, Any], None], offset: int) -> Callable[[int, Any], None]:
    return lambda index, value: then(offset + index, value)


class PluginTimeout(Exception):
    """A hook implementation did not return within its budget."""


@dataclass(frozen=True)
class Implementation:
    """One plugin's implementation of one hook."""

    plugin_name: str
    function: Callable[..., Any]
    argnames: tuple[str, ...]
    plugin: object

    def kwargs(self, available: dict[str, Any]) -> dict[str, Any]:
        return {name: available[name] for name in self.argnames}


class PluginHost:
    """A typed facade over the plugin manager that calls hooks one plugin at a time.

    pluggy stops at the first exception and cannot interrupt a slow call, so core never calls
    ``pm.hook.X()`` directly: every implementation runs under :meth:`call_sync` or
    :meth:`call_async`, which log a failure or an overrun as ``plugin.failed`` /
    ``plugin.timeout`` and carry on with the next plugin.
    """

    def __init__(self, pm: pluggy.PluginManager, budget: float = DEFAULT_BUDGET) -> None:
        self.pm = pm
        self.budget = budget
        self._implementations: dict[str, tuple[tuple[Any, ...], tuple[Implementation, ...]]] = {}

    def implementations(self, hook: str) -> list[Implementation]:
        """Implementations in pluggy's call order (tryfirst/trylast honoured)."""
        caller: pluggy.HookCaller = getattr(self.pm.hook, hook)
        registered = tuple(caller.get_hookimpls())
        known = self._implementations.get(hook)
        if known is not None and known[0] == registered:  # unchanged since last asked
            return list(known[1])
        found = tuple(
            Implementation(
                plugin_name=self.pm.get_name(impl.plugin) or repr(impl.plugin),
                function=impl.function,
                argnames=tuple(impl.argnames),
                plugin=impl.plugin,
            )
            for impl in reversed(registered)
        )
        self._implementations[hook] = (registered, found)
        return list(found)

    def call_sync(
        self, hook: str, impl: Implementation, budget: float | None = None, **kwargs: Any
    ) -> tuple[bool, Any]:
        """Run one implementation in a worker thread; ``(ok, result)``.

        The thread lets core stop waiting for a plugin that hangs; its late result is dropped.
        """
        return self.call_in_order(
            hook, [(impl, lambda: impl.function(**impl.kwargs(kwargs)))], budget=budget
        )[0]

    def call_in_order(
        self,
        hook: str,
        calls: Sequence[tuple[Implementation, Callable[[], Any]]],
        then: Callable[[int, Any], None] | None = None,
        budget: float | None = None,
    ) -> list[tuple[bool, Any]]:
        """Run each ``(impl, call)`` in order, each within the time budget, on one worker
        thread handed over once; ``(ok, result)`` per call.

        ``then(i, result)`` runs right after call ``i`` returns and before the next starts, on
        the same thread, and only for a call that returned in time (an exception from it fails
        that call). A call that raises or overruns is logged and the calls after it still run;
        after an overrun they run on another thread, since the hung one is left to its call.
        """
        budget = self.budget if budget is None else budget
        results: list[tuple[bool, Any]] = []
        while len(results) < len(calls):
            offset = len(results)
            pending = calls[offset:]
            after = None if then is None else _shifted(then, offset)
            outcomes, overran = _WORKERS.run_steps([call for _, call in pending], after, budget)
            for (impl, _), outcome in zip(pending, outcomes[:overran], strict=False):
                results.append(self._settle(hook, impl, outcome))
            if overran is not None:
                impl = pending[overran][0]
                log.error("plugin.timeout", hook=hook, plugin=impl.plugin_name, budget_s=budget)
                results.append(
                    (False, PluginTimeout(f"{impl.plugin_name}.{hook} exceeded {budget}s"))
                )
        return results

    @staticmethod
    def _settle(
        hook: str, impl: Implementation, outcome: tuple[bool, Any] | None
    ) -> tuple[bool, Any]:
        assert outcome is not None  # every call before an overrun has its outcome
        ok, value = outcome
        if not ok:
            log.error(
                "plugin.failed",
                hook=hook,
                plugin=impl.plugin_name,
                error=repr(value),
                exc_info=value,
            )
        return ok, value

    async def call_async(self, hook: str, impl: Implementation, **kwargs: Any) -> tuple[bool, Any]:
        """Await one implementation (sync or async) under the time budget."""
        try:
            with anyio.fail_after(self.budget):
                if inspect.iscoroutinefunction(impl.function):
                    result = await impl.function(**impl.kwargs(kwargs))
                else:
                    ok, result = await anyio.to_thread.run_sync(
                        lambda: self.call_sync(hook, impl, **kwargs), abandon_on_cancel=True
                    )
                    if not ok:
                        return False, result
                if inspect.isawaitable(result):
                    result = await result
                return True, result
        except TimeoutError as exc:
            log.error("plugin.timeout", hook=hook, plugin=impl.plugin_name, budget_s=self.budget)
            return False, exc
        except Exception as exc:
            log.error(
                "plugin.failed", hook=hook, plugin=impl.plugin_name, error=repr(exc), exc_info=exc
            )
            return False, exc

    def collect(self, hook: str, **kwargs: Any) -> list[tuple[Implementation, Any]]:
        """Call every implementation of a collecting hook; ``(impl, item)`` per item returned."""
        items: list[tuple[Implementation, Any]] = []
        for impl in self.implementations(hook):
            ok, result = self.call_sync(hook, impl, **kwargs)
            if not ok or result is None:
                continue
            try:
                items.extend((impl, item) for item in result)
            except TypeError as exc:
                log.error(
                    "plugin.failed",
                    hook=hook,
                    plugin=impl.plugin_name,
                    error=f"returned {type(result).__name__}, not an iterable: {exc}",
                )
        return items

    def features(self) -> list[tuple[Implementation, Feature]]:
        found: list[tuple[Implementation, Feature]] = []
        for impl, item in self.collect("register_features"):
            if isinstance(item, Feature):
                found.append((impl, item))
            else:
                log.error(
                    "plugin.failed",
                    hook="register_features",
                    plugin=impl.plugin_name,
                    error=f"returned {type(item).__name__}, not a Feature",
                )
        return found

    def call_each(self, hook: str, **kwargs: Any) -> None:
        """Call every implementation of a hook whose results are ignored."""
        for impl in self.implementations(hook):
            self.call_sync(hook, impl, **kwargs)

    async def call_each_async(self, hook: str, *, reverse: bool = False, **kwargs: Any) -> None:
        impls = self.implementations(hook)
        for impl in reversed(impls) if reverse else impls:
            await self.call_async(hook, impl, **kwargs)

    def describe(self) -> list[dict[str, Any]]:
        """Every registered plugin with the hooks it implements (for ``scaisend plugins``)."""
        described = []
        for name, plugin in self.pm.list_name_plugin():
            hooks = sorted(caller.name for caller in self.pm.get_hookcallers(plugin) or [])
            described.append({"name": name, "hooks": hooks, "plugin": plugin})
        return described
