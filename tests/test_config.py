"""Configuration: check-config, secrets from the environment, defaults, the embedded default."""

from __future__ import annotations

import json
import signal
import stat
import subprocess
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from core.cli import cli
from core.config import SECRETS_FILE, ConfigError, generated_secrets
from core.runtime import load
from core.settings import SettingsLayers
from core.testing import plugin_manager, random_secret
from tests.serving import free_port, scaisend_executable, serve_environment

SPEC_DEFAULTS = {
    "open_tracking_enabled": True,
    "click_tracking_enabled": True,
    "click_tracking_enable_text": False,
    "subscription_tracking_enabled": False,
    "ganalytics_enabled": False,
    "image_embed_mode": "proxy",
}


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch):
    monkeypatch.setenv("SCAISEND_DISABLE_PLUGIN_AUTOLOAD", "1")
    for name in ("SCAISEND_CONFIG", "TRACKING_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


def good_document(tmp_path: Path) -> dict:
    return {
        "server": {
            "data_dir": str(tmp_path / "data"),
            "signing_keys": [{"id": "k1", "secret": {"$env": "TEST_SIGNING_KEY"}}],
            "admin_jwt": {"algorithm": "HS256", "secret": {"$env": "TEST_ADMIN_SECRET"}},
        },
        "tenants": {"acme": {"api_keys": [{"$env": "TEST_ACME_KEY"}]}},
    }


@pytest.fixture
def secrets_env(monkeypatch) -> dict[str, str]:
    values = {
        "TEST_SIGNING_KEY": "signing-" + random_secret(),
        "TEST_ADMIN_SECRET": "admin-" + random_secret(),
        "TEST_ACME_KEY": "acme-" + random_secret(),
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def write(path: Path, document: dict) -> Path:
    path.write_text(yaml.safe_dump(document))
    return path


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def load_file(path: Path):
    return load(path, pm=plugin_manager())


def test_check_config_accepts_a_good_file(tmp_path, secrets_env):
    result = run("check-config", str(write(tmp_path / "good.yaml", good_document(tmp_path))))
    assert result.exit_code == 0, result.output
    assert "OK (1 tenant(s)" in result.output
    assert "open_tracking" in result.output


def test_check_config_lists_every_error_with_path_and_value(tmp_path, secrets_env):
    document = good_document(tmp_path)
    document["server"]["http"] = {"port": 70000}
    document["server"]["colour"] = "blue"
    document["server"]["signing_keys"].append({"id": "k1", "secret": random_secret()})
    document["tenants"]["acme"]["tracking"] = {
        "click_tracking": {"enable": "yes"},
        "image_proxy": {"embed_mode": "inline"},
    }
    document["tenants"]["Bad Tenant"] = {}
    result = run("check-config", str(write(tmp_path / "bad.yaml", document)))
    assert result.exit_code == 2
    problems = [line for line in result.output.splitlines() if line.startswith("  - ")]
    assert problems == [
        "  - server.colour: unknown key (allowed: admin_jwt, bounce_domain, data_dir, "
        "database_url, feature_order, http, node_id, plugin_timeout_seconds, signing_keys, "
        'sinks, smtp, tracking_base_url, transport, trusted_proxies) (value: "blue")',
        "  - server.http.port: 70000 is greater than the maximum of 65535 (value: 70000)",
        "  - tenants.Bad Tenant: invalid name: 'Bad Tenant' does not match "
        "'^[a-z0-9][a-z0-9_-]{0,63}$' (value: \"Bad Tenant\")",
        "  - tenants.acme.tracking.click_tracking.enable: 'yes' is not of type 'boolean' "
        '(value: "yes")',
        "  - tenants.acme.tracking.image_proxy.embed_mode: 'inline' is not one of "
        "['proxy', 'cid'] (value: \"inline\")",
        '  - server.signing_keys.1.id: key id is used twice (value: "k1")',
    ]


def test_check_config_reports_a_missing_file_and_bad_yaml(tmp_path):
    result = run("check-config", str(tmp_path / "absent.yaml"))
    assert result.exit_code == 2
    assert "cannot read" in result.output
    broken = tmp_path / "broken.yaml"
    broken.write_text("server:\n  http: {port: 80\n")
    result = run("check-config", str(broken))
    assert result.exit_code == 2
    assert "is not valid YAML" in result.output
    assert "line 3" in result.output


def test_secrets_never_appear_in_error_output(tmp_path, monkeypatch):
    short_secret = "hunter2-is-my-password"  # too short: reported, never shown
    short_key = "acme-key-tiny"
    password = "pg-password-9f8e7d"
    monkeypatch.setenv("SHORT_ADMIN_SECRET", "admin-too-short")
    document = {
        "server": {
            "signing_keys": [{"id": "k1", "secret": short_secret}],
            "admin_jwt": {"algorithm": "HS256", "secret": {"$env": "SHORT_ADMIN_SECRET"}},
            "database_url": f"mysql://root:{password}@db.internal/scaisend",
            "unknown_secret": "leaked-unknown-secret-value",
        },
        "tenants": {"acme": {"api_keys": [short_key, short_key]}},
    }
    result = run("check-config", str(write(tmp_path / "bad.yaml", document)))
    assert result.exit_code == 2
    output = result.output
    for path in (
        "server.signing_keys.0.secret",
        "server.admin_jwt.secret",
        "server.database_url",
        "server.unknown_secret",
        "tenants.acme.api_keys.0",
        "tenants.acme.api_keys.1",
    ):
        assert f"  - {path}:" in output, path
    for secret in (short_secret, "admin-too-short", short_key, password, "leaked-unknown"):
        assert secret not in output, secret
    # A YAML error quotes neither the line nor the secret on it.
    broken = tmp_path / "broken.yaml"
    broken.write_text(f'server:\n  admin_jwt: {{secret: "{short_secret}"\n')
    result = run("check-config", str(broken))
    assert result.exit_code == 2
    assert short_secret not in result.output


def test_env_secrets_are_read_and_a_missing_variable_is_named(tmp_path, secrets_env, monkeypatch):
    path = write(tmp_path / "c.yaml", good_document(tmp_path))
    _, config = load_file(path)
    assert config.signing_keys[0].secret == secrets_env["TEST_SIGNING_KEY"].encode()
    assert config.admin_jwt.secret == secrets_env["TEST_ADMIN_SECRET"]
    assert config.tenants["acme"].api_keys == (secrets_env["TEST_ACME_KEY"],)
    assert secrets_env["TEST_SIGNING_KEY"] not in repr(config)

    monkeypatch.delenv("TEST_SIGNING_KEY")
    with pytest.raises(ConfigError) as raised:
        load_file(path)
    assert [str(p) for p in raised.value.problems] == [
        "server.signing_keys.0.secret: environment variable 'TEST_SIGNING_KEY' is not set"
    ]


def test_tracking_base_url_comes_from_the_environment_first(tmp_path, secrets_env, monkeypatch):
    document = good_document(tmp_path)
    document["server"]["tracking_base_url"] = "https://from-yaml.example.com"
    path = write(tmp_path / "c.yaml", document)
    assert load_file(path)[1].tracking_base_url == "https://from-yaml.example.com"

    monkeypatch.setenv("TRACKING_BASE_URL", "https://track.example.net/base/")
    _, config = load_file(path)
    assert config.tracking_base_url == "https://track.example.net/base"
    assert config.bounce_domain == "track.example.net"

    monkeypatch.setenv("TRACKING_BASE_URL", "ftp://nope.example.net/?x=1")
    with pytest.raises(ConfigError) as raised:
        load_file(path)
    assert [p.path for p in raised.value.problems] == ["$TRACKING_BASE_URL"]


def test_defaults_are_filled(tmp_path, secrets_env):
    _, config = load_file(write(tmp_path / "c.yaml", good_document(tmp_path)))
    assert (config.http_host, config.http_port) == ("127.0.0.1", 8000)
    assert config.tracking_base_url == "http://127.0.0.1:8000"
    assert config.database_url == f"sqlite:///{tmp_path / 'data' / 'scaisend.db'}"
    assert config.node_id == "main"
    assert config.plugin_timeout == 2.0
    assert config.admin_jwt.issuer == "scaisend"
    assert dict(config.transport) == {"type": "outbox", "path": "outbox", "fsync": False}
    assert [dict(sink) for sink in config.sinks] == [
        {"type": "database", "name": "database"},
        {"type": "jsonl", "name": "jsonl", "path": "events.jsonl", "fsync": False},
    ]
    assert dict(config.tenants["acme"].tracking["click_tracking"]) == {
        "enable": True,
        "enable_text": False,
    }


def test_a_relative_data_dir_is_relative_to_the_config_file(tmp_path, secrets_env):
    document = good_document(tmp_path)
    document["server"]["data_dir"] = "state"
    (tmp_path / "etc").mkdir()
    _, config = load_file(write(tmp_path / "etc" / "c.yaml", document))
    assert config.data_dir == tmp_path / "etc" / "state"


def flat_effective(plugins, config, tenant: str) -> dict:
    layers = SettingsLayers(plugins.features)
    return layers.flatten(layers.effective(config.tenants[tenant]))


def test_embedded_default_has_the_default_tenant_with_the_spec_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plugins, config = load(pm=plugin_manager())
    assert config.embedded
    assert list(config.tenants) == ["default"]
    assert config.data_dir == tmp_path / "scaisend-data"
    assert config.database_url == f"sqlite:///{tmp_path / 'scaisend-data' / 'scaisend.db'}"
    effective = flat_effective(plugins, config, "default")
    assert {name: effective[name] for name in SPEC_DEFAULTS} == SPEC_DEFAULTS


def test_embedded_secrets_are_generated_once_and_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, first = load(pm=plugin_manager())
    stored = tmp_path / "scaisend-data" / SECRETS_FILE
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    _, second = load(pm=plugin_manager())
    assert second.tenants["default"].api_keys == first.tenants["default"].api_keys
    assert second.signing_keys == first.signing_keys
    assert second.admin_jwt.secret == first.admin_jwt.secret
    saved = json.loads(stored.read_text())
    assert first.tenants["default"].api_keys == (saved["api_key"],)
    assert len(first.signing_keys[0].secret) >= 32
    # Another data directory gets secrets of its own.
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.chdir(other)
    _, elsewhere = load(pm=plugin_manager())
    assert elsewhere.tenants["default"].api_keys != first.tenants["default"].api_keys


def test_processes_starting_together_agree_on_one_set_of_secrets(tmp_path):
    with ProcessPoolExecutor(4) as pool:
        results = list(pool.map(generated_secrets, [tmp_path / "data"] * 8))
    assert all(result == results[0] for result in results)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [SECRETS_FILE]


def test_api_key_prints_the_key_again(tmp_path, monkeypatch, secrets_env):
    monkeypatch.chdir(tmp_path)
    first = run("api-key")
    assert first.exit_code == 0, first.output
    key = first.stdout.strip()
    assert key == json.loads((tmp_path / "scaisend-data" / SECRETS_FILE).read_text())["api_key"]
    assert run("api-key", "default").stdout.strip() == key

    path = write(tmp_path / "c.yaml", good_document(tmp_path))
    result = run("api-key", "--config", str(path), "acme")
    assert (result.exit_code, result.stdout.strip()) == (0, secrets_env["TEST_ACME_KEY"])
    unknown = run("api-key", "--config", str(path), "nobody")
    assert unknown.exit_code != 0
    assert "unknown tenant 'nobody'" in unknown.output


def test_serve_without_a_file_warns_and_prints_the_generated_key(tmp_path):
    server = subprocess.Popen(
        [scaisend_executable(), "serve", "--port", str(free_port())],
        cwd=tmp_path,
        env=serve_environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: list[str] = []
    try:
        assert server.stderr is not None
        for line in server.stderr:
            seen.append(line)
            if line.startswith("listening on"):
                break
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    banner = "".join(seen)
    assert "PRODUCTION MUST SET ITS OWN KEYS" in banner
    key = json.loads((tmp_path / "scaisend-data" / SECRETS_FILE).read_text())["api_key"]
    assert f"API key: {key}" in banner


def test_plugins_lists_features_in_the_configured_order_with_routes_and_hooks(
    tmp_path, secrets_env
):
    document = good_document(tmp_path)
    document["server"]["feature_order"] = {"image_proxy": 5, "open_tracking": 45}
    path = write(tmp_path / "c.yaml", document)
    result = run("plugins", "--config", str(path), "--json")
    assert result.exit_code == 0, result.output
    described = json.loads(result.stdout)
    features = described["features"]
    orders = [feature["order"] for feature in features]
    assert orders == sorted(orders)
    names = [feature["name"] for feature in features]
    builtin = ["image_proxy", "ganalytics", "click_tracking", "subscription_tracking"]
    assert [name for name in names if name in {*builtin, "open_tracking"}] == [
        *builtin,
        "open_tracking",
    ]
    by_name = {entry["name"]: entry for entry in described["plugins"]}
    open_tracking = by_name["plugins.open_tracking"]
    assert {"instrument", "register_features", "register_routes"} <= set(open_tracking["hooks"])
    assert open_tracking["routes"] == ["GET /t/o/<token>.gif"]

    text = run("plugins", "--config", str(path))
    assert text.exit_code == 0
    lines = text.stdout.splitlines()
    assert lines[0] == "Features, in pipeline order:"
    assert lines[1].split() == ["5", "image_proxy", "plugins.image_proxy"]
    assert "      route : GET /t/o/<token>.gif" in lines
