"""The plugin manager: what gets loaded, in which order, and how failures are contained."""

from __future__ import annotations

import importlib.metadata
import os
import threading
from collections.abc import Iterable, Iterator, Sequence

import click
import pytest
from click.testing import CliRunner
from quart import Blueprint, Response

from core import (
    DeliveryResult,
    Event,
    Feature,
    InstrumentContext,
    OutgoingMessage,
    Runtime,
    SinkType,
    StagedDocument,
    TransportType,
    hookimpl,
)
from core.cli import routes_by_plugin
from core.config import ConfigError
from core.instrument import instrument
from core.pipeline import Document, Recipient
from core.plugins import (
    AUTOLOAD_ENV,
    DEFAULT_PLUGINS,
    INFRASTRUCTURE_PLUGINS,
    PluginHost,
    build_plugin_manager,
)
from core.runtime import Plugins, load
from core.testing import Harness, base_document, plugin_manager

DEFAULT_ORDER = [
    ("open_tracking", 10),
    ("ganalytics", 20),
    ("click_tracking", 30),
    ("subscription_tracking", 40),
    ("image_proxy", 50),
]


def feature(name: str, order: int, **settings: object) -> Feature:
    return Feature(
        name=name,
        order=order,
        settings_schema={
            "type": "object",
            "properties": {"enable": {"type": "boolean", "default": True}, **settings},
        },
    )


class FeaturePlugin:
    """A plugin contributing one feature whose instrument hook appends a marker."""

    def __init__(self, name: str, order: int, marker: str | None = None) -> None:
        self.feature = feature(name, order)
        self.marker = marker if marker is not None else f"[{name}]"
        self.__name__ = f"plugin-{name}"

    @hookimpl
    def register_features(self) -> Iterable[Feature]:
        return [self.feature]

    @hookimpl
    def instrument(self, doc: StagedDocument, ctx: InstrumentContext) -> None:
        if ctx.feature == self.feature.name and doc.html is not None:
            doc.html.append(self.marker)


def run_pipeline(plugins: Plugins, harness: Harness, html: str = "<p>hi</p>") -> str:
    tenant = harness.config.tenants["acme"]
    runtime_settings = plugins.features
    settings = {f.name: {"enable": True} for f in runtime_settings}
    compiled, _ = instrument(
        plugins,
        Document(html=html),
        tenant=tenant,
        settings=settings,
        message_id="m1",
        tracking_base_url=harness.config.tracking_base_url,
        tokens=Runtime.open(harness.config, plugins).tokens,
    )
    assert compiled.html is not None
    return compiled.html.stamp(Recipient(0, "a@example.com", "tok"))


def test_default_feature_order_is_exact(tmp_path):
    plugins, _ = Harness(tmp_path).loaded
    assert [(f.name, f.order) for f in plugins.features] == DEFAULT_ORDER


def test_registration_order_does_not_change_feature_order(tmp_path):
    forwards = Plugins.collect(plugin_manager([], builtins=DEFAULT_PLUGINS))
    backwards = Plugins.collect(plugin_manager([], builtins=tuple(reversed(DEFAULT_PLUGINS))))
    assert forwards.features.names() == backwards.features.names()


def test_third_party_feature_slots_into_the_gaps(tmp_path):
    between = FeaturePlugin("between", 25)
    plugins, _ = Harness(tmp_path, plugins=[between]).loaded
    assert plugins.features.names() == [
        "open_tracking",
        "ganalytics",
        "between",
        "click_tracking",
        "subscription_tracking",
        "image_proxy",
    ]


def test_yaml_overrides_order_and_ties_break_by_name(tmp_path):
    harness = Harness(
        tmp_path,
        plugins=[FeaturePlugin("zeta", 60), FeaturePlugin("alpha", 60)],
        server={"feature_order": {"image_proxy": 5, "zeta": 20}},
    )
    assert harness.plugins.features.names() == [
        "image_proxy",
        "open_tracking",
        "ganalytics",
        "zeta",
        "click_tracking",
        "subscription_tracking",
        "alpha",
    ]
    assert harness.plugins.features.get("image_proxy").order == 5


def test_instrument_runs_enabled_features_in_order(tmp_path):
    first, second = FeaturePlugin("first", 1), FeaturePlugin("second", 2)
    harness = Harness(tmp_path, plugins=[second, first], builtins=INFRASTRUCTURE_PLUGINS)
    assert run_pipeline(harness.plugins, harness) == "<p>hi</p>[first][second]"

    harness = Harness(
        tmp_path / "reordered",
        plugins=[second, first],
        builtins=INFRASTRUCTURE_PLUGINS,
        server={"feature_order": {"first": 3}},
    )
    assert run_pipeline(harness.plugins, harness) == "<p>hi</p>[second][first]"


def test_disabled_feature_does_not_instrument(tmp_path):
    plugins_ = [FeaturePlugin("on", 1), FeaturePlugin("off", 2)]
    harness = Harness(tmp_path, plugins=plugins_, builtins=INFRASTRUCTURE_PLUGINS)
    compiled, applied = instrument(
        harness.plugins,
        Document(html="<p>x</p>"),
        tenant=harness.config.tenants["acme"],
        settings={"on": {"enable": True}, "off": {"enable": False}},
        message_id="m",
        tracking_base_url="https://t.example",
        tokens=Runtime.open(harness.config, harness.plugins).tokens,
    )
    assert applied == ["on"]
    assert compiled.html.stamp(Recipient(0, "a@x.test", "t")) == "<p>x</p>[on]"


def test_autoload_reads_entry_points_unless_disabled(monkeypatch, tmp_path):
    installed = {ep.name for ep in importlib.metadata.entry_points(group="scaisend")}
    if "example" not in installed:
        if os.environ.get("CI"):
            pytest.fail("tests/example_plugin is not installed (tox installs it)")
        pytest.skip("install tests/example_plugin (tox does) to test entry-point loading")
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    pm = build_plugin_manager()
    assert pm.has_plugin("example")
    # The installed plugin's feature, schemas and route are all in effect.
    plugins = Plugins.collect(pm)
    assert plugins.features.names().index("example_view_link") == 3
    document = base_document(
        tmp_path, {"acme": {"plugins": {"example_view_link": {"event_type": 5}}}}
    )
    with pytest.raises(ConfigError) as refused:
        load(document=document, pm=pm, base_dir=tmp_path, environ={})
    assert [p.path for p in refused.value.problems] == [
        "tenants.acme.plugins.example_view_link.event_type"
    ]
    assert "GET /example/view/<token>" in str(routes_by_plugin(plugins.host)["example"])

    monkeypatch.setenv(AUTOLOAD_ENV, "1")
    assert not build_plugin_manager().has_plugin("example")


# --- isolation --------------------------------------------------------------------------


class Exploding:
    __name__ = "exploding"

    @hookimpl
    def register_features(self) -> Iterable[Feature]:
        raise RuntimeError("boom in register_features")

    @hookimpl
    def register_routes(self) -> Iterable[Blueprint]:
        raise RuntimeError("boom in register_routes")

    @hookimpl
    def startup(self, runtime: Runtime) -> None:
        raise RuntimeError("boom in startup")


class Hanging:
    """Blocks in every hook until ``release`` is set (the test sets it when done)."""

    __name__ = "hanging"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.feature = feature("hanging", 15)

    @hookimpl
    def register_features(self) -> Iterable[Feature]:
        return [self.feature]

    @hookimpl
    def instrument(self, doc: StagedDocument, ctx: InstrumentContext) -> None:
        self.release.wait()
        if doc.html is not None:
            doc.html.append("[late edit]")

    @hookimpl
    async def startup(self, runtime: Runtime) -> None:
        import anyio

        await anyio.sleep_forever()


class Raising(FeaturePlugin):
    @hookimpl
    def instrument(self, doc: StagedDocument, ctx: InstrumentContext) -> None:
        if doc.html is not None:
            doc.html.append("[half done]")
        raise ValueError("instrument failed half way")


@pytest.fixture
def hanging() -> Iterator[Hanging]:
    plugin = Hanging()
    yield plugin
    plugin.release.set()


def test_failing_registration_is_skipped(tmp_path, capfd):
    harness = Harness(tmp_path, plugins=[Exploding()])
    assert harness.plugins.features.names() == [name for name, _ in DEFAULT_ORDER]
    assert "plugin.failed" in capfd.readouterr().err


def test_raising_instrument_leaves_no_edits_and_others_apply(tmp_path):
    harness = Harness(
        tmp_path,
        plugins=[FeaturePlugin("before", 1), Raising("raising", 2), FeaturePlugin("after", 3)],
        builtins=INFRASTRUCTURE_PLUGINS,
    )
    assert run_pipeline(harness.plugins, harness) == "<p>hi</p>[before][after]"


def test_instrument_over_budget_is_skipped(tmp_path, hanging, capfd):
    harness = Harness(
        tmp_path,
        plugins=[FeaturePlugin("before", 1), hanging, FeaturePlugin("after", 30)],
        builtins=INFRASTRUCTURE_PLUGINS,
        server={"plugin_timeout_seconds": 0.2},
    )
    assert run_pipeline(harness.plugins, harness) == "<p>hi</p>[before][after]"
    assert '"plugin.timeout"' in capfd.readouterr().err
    hanging.release.set()


def test_messages_after_a_hang_are_instrumented_while_the_plugin_still_hangs(
    tmp_path, hanging, capfd
):
    """The thread a hung plugin holds is never handed a later call: every later message still
    gets the other features, and the hung plugin is skipped each time."""
    harnesses = [
        Harness(
            tmp_path / str(n),
            plugins=[FeaturePlugin("before", 1), hanging, FeaturePlugin("after", 30)],
            builtins=INFRASTRUCTURE_PLUGINS,
            server={"plugin_timeout_seconds": 0.2},
        )
        for n in range(3)
    ]
    results = [run_pipeline(harness.plugins, harness) for harness in harnesses]
    assert results == ["<p>hi</p>[before][after]"] * 3
    assert capfd.readouterr().err.count('"plugin.timeout"') == 3
    hanging.release.set()


class Slow(FeaturePlugin):
    """Takes ``seconds`` before adding its marker: within its budget, but not within two."""

    def __init__(self, name: str, order: int, seconds: float) -> None:
        super().__init__(name, order)
        self.seconds = seconds

    @hookimpl
    def instrument(self, doc: StagedDocument, ctx: InstrumentContext) -> None:
        if ctx.feature == self.feature.name and doc.html is not None:
            threading.Event().wait(self.seconds)
            doc.html.append(self.marker)


def test_each_feature_has_its_own_budget(tmp_path):
    """Features of one message share a worker thread, not a budget: two features that each
    take most of the budget both apply."""
    harness = Harness(
        tmp_path,
        plugins=[Slow("first", 1, 0.6), Slow("second", 2, 0.6)],
        builtins=INFRASTRUCTURE_PLUGINS,
        server={"plugin_timeout_seconds": 1.0},
    )
    assert run_pipeline(harness.plugins, harness) == "<p>hi</p>[first][second]"


class Overlapping(FeaturePlugin):
    @hookimpl
    def instrument(self, doc: StagedDocument, ctx: InstrumentContext) -> None:
        if doc.html is not None:
            doc.html.replace(0, 3, "<P>")


def test_conflicting_edits_are_refused_whole(tmp_path):
    class Wrapper(FeaturePlugin):
        @hookimpl
        def instrument(self, doc: StagedDocument, ctx: InstrumentContext) -> None:
            if doc.html is not None:
                doc.html.replace(1, 2, "div")
                doc.html.append("[wrapper]")

    harness = Harness(
        tmp_path,
        plugins=[Overlapping("upper", 1), Wrapper("wrapper", 2)],
        builtins=INFRASTRUCTURE_PLUGINS,
    )
    # The second feature's edit overlaps the first one's, so none of its edits apply.
    assert run_pipeline(harness.plugins, harness) == "<P>hi</p>"


@pytest.mark.anyio
async def test_failing_and_hanging_startup_do_not_stop_the_server(tmp_path, hanging):
    harness = Harness(
        tmp_path, plugins=[Exploding(), hanging], server={"plugin_timeout_seconds": 0.2}
    )
    async with harness.serving() as client:
        response = await client.get("/health")
        assert response.status_code == 200


# --- each hook can be used by a plugin ---------------------------------------------------


class RoutePlugin:
    def __init__(self, path: str = "/hello") -> None:
        self.__name__ = f"route-plugin{path}"
        self.blueprint = Blueprint(f"bp{abs(hash(path))}", __name__)
        self.blueprint.add_url_rule(path, view_func=self.hello, methods=["GET"])

    async def hello(self) -> Response:
        return Response("hello", content_type="text/plain")

    @hookimpl
    def register_routes(self) -> Iterable[Blueprint]:
        return [self.blueprint]


@pytest.mark.anyio
async def test_register_routes_mounts_and_refuses_clashes(tmp_path, capfd):
    harness = Harness(tmp_path, plugins=[Exploding(), RoutePlugin(), RoutePlugin("/health")])
    async with harness.serving() as client:
        assert (await (await client.get("/hello")).get_data(as_text=True)) == "hello"
        health = await client.get("/health")
        assert await health.get_json() == {"status": "healthy"}
    assert "routes already taken" in capfd.readouterr().err


class Collecting:
    name = "collecting"

    def __init__(self) -> None:
        self.events: list[Event] = []

    def write_batch(self, events: Sequence[Event]) -> None:
        self.events.extend(events)

    def close(self) -> None:
        return None


class SinkPlugin:
    __name__ = "sink-plugin"

    def __init__(self) -> None:
        self.sink = Collecting()

    @hookimpl
    def register_sinks(self) -> Iterable[SinkType]:
        return [SinkType(type="collecting", factory=lambda options, runtime: self.sink)]


def test_register_sinks_receives_events(tmp_path):
    plugin = SinkPlugin()
    harness = Harness(tmp_path, plugins=[plugin], server={"sinks": [{"type": "collecting"}]})
    runtime = harness.open_runtime()
    runtime.start()
    try:
        runtime.emit(Event(type="custom", tenant="acme", data={"n": 1}))
        assert runtime.bus is not None
        assert runtime.bus.flush()
    finally:
        runtime.close()
    assert [(e.type, dict(e.data)) for e in plugin.sink.events] == [("custom", {"n": 1})]


class LifecyclePlugin:
    __name__ = "lifecycle"

    def __init__(self) -> None:
        self.calls: list[tuple[str, bool]] = []

    @hookimpl
    async def startup(self, runtime: Runtime) -> None:
        self.calls.append(("startup", isinstance(runtime, Runtime)))

    @hookimpl
    def shutdown(self, runtime: Runtime) -> None:
        self.calls.append(("shutdown", isinstance(runtime, Runtime)))


@pytest.mark.anyio
async def test_startup_and_shutdown_get_the_runtime(tmp_path):
    plugin = LifecyclePlugin()
    async with Harness(tmp_path, plugins=[plugin]).serving() as client:
        await client.get("/health")
        assert plugin.calls == [("startup", True)]
    assert plugin.calls == [("startup", True), ("shutdown", True)]


class CommandPlugin:
    __name__ = "command-plugin"

    @hookimpl
    def register_commands(self, cli: click.Group) -> None:
        @cli.command("hello-plugin")
        def hello() -> None:
            click.echo("hello from a plugin")


def test_register_commands_adds_a_cli_command():
    group = click.Group()
    PluginHost(plugin_manager([CommandPlugin()], builtins=())).call_each(
        "register_commands", cli=group
    )
    result = CliRunner().invoke(group, ["hello-plugin"])
    assert result.exit_code == 0
    assert result.output == "hello from a plugin\n"


class Recorder:
    name = "recorder"

    def __init__(self, options) -> None:
        self.options = dict(options)
        self.sent: list[OutgoingMessage] = []

    async def deliver(self, messages: Sequence[OutgoingMessage]) -> list[DeliveryResult]:
        self.sent.extend(messages)
        return [DeliveryResult("delivered") for _ in messages]

    async def aclose(self) -> None:
        return None


class TransportPlugin:
    __name__ = "transport-plugin"

    @hookimpl
    def register_transports(self) -> Iterable[TransportType]:
        return [
            TransportType(
                type="recorder",
                factory=lambda options, runtime: Recorder(options),
                options_schema={
                    "type": "object",
                    "properties": {"label": {"type": "string", "default": "x"}},
                },
            )
        ]


@pytest.mark.anyio
async def test_register_transports_offers_a_configurable_transport(tmp_path):
    harness = Harness(
        tmp_path, plugins=[TransportPlugin()], server={"transport": {"type": "recorder"}}
    )
    runtime = harness.open_runtime()
    try:
        transport = runtime.transport()
        assert isinstance(transport, Recorder)
        assert transport.options == {"type": "recorder", "label": "x"}
        message = OutgoingMessage("acme", "m1", 0, "b@x.test", "r@y.test", b"Subject: x\r\n\r\n")
        assert await transport.deliver([message]) == [DeliveryResult("delivered")]
    finally:
        await runtime.aclose_transport()
        runtime.close()


def test_transport_options_are_validated(tmp_path):
    with pytest.raises(ConfigError, match=r"server\.transport"):
        Harness(
            tmp_path,
            plugins=[TransportPlugin()],
            server={"transport": {"type": "recorder", "label": 5}},
        )
