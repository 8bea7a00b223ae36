"""Plugin calls share the waiting caller's CPU, and give every CPU back when they end."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from core.plugins import Implementation, PluginHost, build_plugin_manager

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or len(os.sched_getaffinity(0)) < 2,
    reason="CPU pinning needs Linux and at least two CPUs the process may use",
)


def host(budget: float = 2.0) -> PluginHost:
    return PluginHost(build_plugin_manager(builtins=(), autoload=False), budget=budget)


def implementation(function) -> Implementation:
    return Implementation(plugin_name="probe", function=function, argnames=(), plugin=object())


def test_the_caller_waits_on_one_cpu_and_gets_its_cpus_back():
    caller = threading.get_native_id()
    before = os.sched_getaffinity(0)
    seen: dict[str, set[int]] = {}

    def probe() -> None:
        seen["caller"] = os.sched_getaffinity(caller)

    ok, _ = host().call_sync("instrument", implementation(probe))
    assert ok
    assert len(seen["caller"]) == 1
    assert seen["caller"] <= before
    assert os.sched_getaffinity(0) == before


def test_plugin_code_and_the_threads_it_starts_may_run_on_every_cpu():
    allowed = os.sched_getaffinity(0)
    seen: dict[str, set[int]] = {}

    def starts_a_thread() -> None:
        seen["plugin"] = os.sched_getaffinity(0)
        thread = threading.Thread(target=lambda: seen.setdefault("thread", os.sched_getaffinity(0)))
        thread.start()
        thread.join()

    ok, _ = host().call_sync("instrument", implementation(starts_a_thread))
    assert ok
    assert seen == {"plugin": allowed, "thread": allowed}


def test_a_caller_pinned_by_its_application_keeps_its_pinning():
    cpu = min(os.sched_getaffinity(0))
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        ok, _ = host().call_sync("instrument", implementation(lambda: None))
        assert ok
        assert os.sched_getaffinity(0) == {cpu}
    finally:
        os.sched_setaffinity(0, before)


def test_a_failing_call_gives_the_caller_its_cpus_back():
    before = os.sched_getaffinity(0)

    def fail() -> None:
        raise RuntimeError("plugin bug")

    ok, error = host().call_sync("instrument", implementation(fail))
    assert not ok
    assert isinstance(error, RuntimeError)
    assert os.sched_getaffinity(0) == before


def test_a_hung_call_holds_neither_the_caller_nor_a_single_cpu():
    before = os.sched_getaffinity(0)
    release = threading.Event()
    hung: list[int] = []

    def hang() -> None:
        hung.append(threading.get_native_id())
        release.wait()

    try:
        ok, _ = host(budget=0.2).call_sync("instrument", implementation(hang))
        assert not ok
        assert os.sched_getaffinity(0) == before
        assert os.sched_getaffinity(hung[0]) == before
    finally:
        release.set()
