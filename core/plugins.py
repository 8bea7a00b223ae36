"""Building the plugin manager, and calling hooks with each plugin isolated from the others."""

from __future__ import annotations

import importlib
import inspect
import os
import queue
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import pluggy
import structlog

from core import hookspecs
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
        threading.Thread(target=self._serve, name="plugin-call", daemon=True).start()

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

    def run(self, call: Callable[[], Any], budget: float) -> tuple[bool, Any] | None:
        """``(True, result)`` or ``(False, exception)``; ``None`` when ``budget`` ran out."""
        with self._lock:
            worker = self._idle.pop() if self._idle else None
        if worker is None:
            worker = _Worker()
        outcome: list[tuple[bool, Any]] = []
        done = threading.Event()

        def job() -> None:
            try:
                outcome.append((True, call()))
            except BaseException as exc:  # noqa: BLE001 - every plugin failure is isolated
                outcome.append((False, exc))
            finally:
                done.set()

        worker.jobs.put(job)
        if not done.wait(budget):
            return None
        with self._lock:
            if len(self._idle) < self.IDLE_LIMIT:
                self._idle.append(worker)
        return outcome[0]


_WORKERS = _Workers()


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

    def implementations(self, hook: str) -> list[Implementation]:
        """Implementations in pluggy's call order (tryfirst/trylast honoured)."""
        caller: pluggy.HookCaller = getattr(self.pm.hook, hook)
        return [
            Implementation(
                plugin_name=self.pm.get_name(impl.plugin) or repr(impl.plugin),
                function=impl.function,
                argnames=tuple(impl.argnames),
                plugin=impl.plugin,
            )
            for impl in reversed(caller.get_hookimpls())
        ]

    def call_sync(
        self, hook: str, impl: Implementation, budget: float | None = None, **kwargs: Any
    ) -> tuple[bool, Any]:
        """Run one implementation in a worker thread; ``(ok, result)``.

        The thread lets core stop waiting for a plugin that hangs; its late result is dropped.
        """
        budget = self.budget if budget is None else budget
        outcome = _WORKERS.run(lambda: impl.function(**impl.kwargs(kwargs)), budget)
        if outcome is None:
            log.error("plugin.timeout", hook=hook, plugin=impl.plugin_name, budget_s=budget)
            return False, PluginTimeout(f"{impl.plugin_name}.{hook} exceeded {budget}s")
        ok, value = outcome
        if not ok:
            log.error(
                "plugin.failed",
                hook=hook,
                plugin=impl.plugin_name,
                error=repr(value),
                exc_info=value,
            )
            return False, value
        return True, value

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
