"""YAML in, one validated and immutable configuration out."""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import structlog
import yaml

from core.features import OrderedFeatures
from core.schema import CORE_SERVER_PROPERTIES, build_schema, fill_defaults
from core.sinks import SinkType
from core.transports import TransportType

log = structlog.get_logger("scaisend.config")

TRACKING_BASE_URL_ENV = "TRACKING_BASE_URL"
CONFIG_ENV = "SCAISEND_CONFIG"
EMBEDDED_DATA_DIR = "scaisend-data"
EMBEDDED_TENANT = "default"
SECRETS_FILE = "generated-secrets.json"


@dataclass(frozen=True)
class ConfigProblem:
    path: str
    message: str
    value: Any = None

    def __str__(self) -> str:
        shown = _short(self.value)
        return f"{self.path or '(top level)'}: {self.message}" + (
            f" (value: {shown})" if shown is not None else ""
        )


def _short(value: Any) -> str | None:
    if value is None:
        return None
    text = json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


class ConfigError(ValueError):
    """The configuration is invalid; ``problems`` lists every error found, not just the first."""

    def __init__(self, problems: Sequence[ConfigProblem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))


@dataclass(frozen=True)
class SigningKey:
    id: str
    secret: bytes = field(repr=False)


@dataclass(frozen=True)
class AdminJwt:
    algorithm: str
    issuer: str
    secret: str | None = field(default=None, repr=False)
    public_key: str | None = None
    private_key: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Tenant:
    id: str
    api_keys: tuple[str, ...] = field(repr=False)
    tracking: Mapping[str, Any]
    plugins: Mapping[str, Any]


@dataclass(frozen=True)
class Config:
    """Everything the server needs to know, validated, with defaults filled and secrets resolved."""

    tracking_base_url: str
    bounce_domain: str
    data_dir: Path
    database_url: str
    node_id: str
    http_host: str
    http_port: int
    max_body_bytes: int
    smtp_host: str
    smtp_port: int
    signing_keys: tuple[SigningKey, ...]
    admin_jwt: AdminJwt
    trusted_proxies: tuple[str, ...]
    plugin_timeout: float
    transport: Mapping[str, Any]
    sinks: tuple[Mapping[str, Any], ...]
    feature_order: Mapping[str, int]
    tenants: Mapping[str, Tenant]
    embedded: bool = False
    source: str = "(embedded default)"
    smtp: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    """The whole ``server.smtp`` section (listener limits, feedback domains, STARTTLS)."""

    def tenant(self, tenant_id: str) -> Tenant | None:
        return self.tenants.get(tenant_id)


def freeze(value: Any) -> Any:
    """Deep read-only copy: mappings become MappingProxyType, lists become tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """The mutable twin of :func:`freeze` (for merging and JSON output)."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [thaw(v) for v in value]
    return value


def resolve_env(
    document: Any, environ: Mapping[str, str], path: tuple[str, ...] = ()
) -> tuple[Any, list[ConfigProblem]]:
    """Replace every ``{"$env": "NAME"}`` with that environment variable's value."""
    problems: list[ConfigProblem] = []
    if isinstance(document, dict):
        if set(document) == {"$env"}:
            name = document["$env"]
            if not isinstance(name, str) or name not in environ:
                problems.append(
                    ConfigProblem(".".join(path), f"environment variable {name!r} is not set", None)
                )
                return None, problems
            return environ[name], problems
        resolved = {}
        for key, value in document.items():
            resolved[key], sub = resolve_env(value, environ, (*path, str(key)))
            problems.extend(sub)
        return resolved, problems
    if isinstance(document, list):
        items = []
        for index, value in enumerate(document):
            item, sub = resolve_env(value, environ, (*path, str(index)))
            items.append(item)
            problems.extend(sub)
        return items, problems
    return document, problems


def read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigProblem("", f"cannot read {path}: {exc.strerror}")]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([ConfigProblem("", f"{path} is not UTF-8 text")]) from exc
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(
            [ConfigProblem("", f"{path} is not valid YAML: {_yaml_reason(exc)}")]
        ) from exc
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ConfigError(
            [ConfigProblem("", "the configuration must be a mapping", type(document).__name__)]
        )
    return document


def _yaml_reason(exc: yaml.YAMLError) -> str:
    """What is wrong and where, without PyYAML's snippet of the line (it may hold a secret)."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        reason = exc.problem or exc.context or "syntax error"
        if mark is not None:
            return f"{reason} at line {mark.line + 1}, column {mark.column + 1}"
        return reason
    return type(exc).__name__


SECRET_KEYS = ("secret", "private_key", "api_keys", "database_url")
"""Configuration keys whose values never appear in an error message."""


def _is_secret_key(key: object) -> bool:
    return isinstance(key, str) and any(word in key for word in SECRET_KEYS)


def _is_secret_path(path: str) -> bool:
    return any(_is_secret_key(part) for part in path.split("."))


def _redact(value: Any) -> Any:
    """``value`` with everything under a secret key replaced by ``***``."""
    if isinstance(value, Mapping):
        return {k: "***" if _is_secret_key(k) else _redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact(v) for v in value]
    return value


def _secret_strings(value: Any, inside: bool = False) -> set[str]:
    """Every non-empty string found under a secret key of ``value``."""
    found: set[str] = set()
    if isinstance(value, Mapping):
        for key, item in value.items():
            found |= _secret_strings(item, inside or _is_secret_key(key))
    elif isinstance(value, list | tuple):
        for item in value:
            found |= _secret_strings(item, inside)
    elif inside and isinstance(value, str) and value:
        found.add(value)
    return found


def _redacted_message(error: jsonschema.ValidationError) -> str:
    return f"fails '{error.validator}' ({error.validator_value!r})"


def validate(document: Any, schema: Mapping[str, Any]) -> list[ConfigProblem]:
    """Every schema violation of ``document``, each with its dotted path; secrets redacted."""
    validator = jsonschema.Draft202012Validator(schema)
    secrets_in_document = _secret_strings(document)
    problems = []
    for error in validator.iter_errors(document):
        problems.extend(_problems_of(error, secrets_in_document))
    return sorted(problems, key=lambda problem: problem.path)


def _problems_of(
    error: jsonschema.ValidationError, secrets_in_document: set[str]
) -> list[ConfigProblem]:
    parts = [str(part) for part in error.absolute_path]
    schema_path = list(error.schema_path)
    if (
        error.validator == "additionalProperties"
        and error.validator_value is False
        and isinstance(error.instance, Mapping)
    ):
        # One problem per unknown key, at the key's own path.
        subschema = error.schema if isinstance(error.schema, Mapping) else {}
        known = subschema.get("properties", {})
        patterns = list(subschema.get("patternProperties", {}))
        allowed = ", ".join(sorted(known)) or "none"
        unknown = [
            key
            for key in error.instance
            if key not in known and not any(re.search(pattern, str(key)) for pattern in patterns)
        ]
        problems = []
        for key in unknown:
            key_path = ".".join([*parts, str(key)])
            value = "***" if _is_secret_path(key_path) else _redact(error.instance[key])
            problems.append(ConfigProblem(key_path, f"unknown key (allowed: {allowed})", value))
        return problems
    if len(schema_path) >= 2 and schema_path[-2] == "propertyNames":
        # The offending name is the instance; report it where it is.
        return [
            ConfigProblem(
                ".".join([*parts, str(error.instance)]),
                f"invalid name: {error.message}",
                error.instance,
            )
        ]
    path = ".".join(parts)
    if _is_secret_path(path):
        return [ConfigProblem(path, _redacted_message(error), "***")]
    value = _redact(error.instance) if parts else None
    message = error.message
    if value != error.instance and parts:
        message = message.replace(repr(error.instance), repr(value))
    if any(secret in message for secret in secrets_in_document):
        message = _redacted_message(error)
    return [ConfigProblem(path, message, value)]


_GENERATED_KEYS = ("signing_key", "admin_jwt_secret", "api_key")


def generated_secrets(data_dir: Path) -> dict[str, str]:
    """Secrets for the embedded default, created once and kept in the data directory.

    The file (mode 0600) appears whole or not at all, and when several processes start at
    once exactly one set of secrets wins and all of them use it.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / SECRETS_FILE
    if not path.exists():
        created = {
            "signing_key": secrets.token_urlsafe(32),
            "admin_jwt_secret": secrets.token_urlsafe(32),
            "api_key": "ss_" + secrets.token_urlsafe(32),
        }
        draft = data_dir / f".{SECRETS_FILE}.{secrets.token_hex(8)}"
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(created, handle, indent=2)
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(draft, path)  # atomic, and refuses to replace another process's file
                log.warning("config.secrets_generated", path=str(path))
            except FileExistsError:
                pass
        finally:
            draft.unlink(missing_ok=True)
    return _read_secrets(path)


def _read_secrets(path: Path) -> dict[str, str]:
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(
            [ConfigProblem("", f"cannot read the generated secrets in {path}: {exc}")]
        ) from exc
    if not isinstance(stored, dict) or not all(
        isinstance(stored.get(key), str) and stored[key] for key in _GENERATED_KEYS
    ):
        raise ConfigError(
            [ConfigProblem("", f"{path} is not a generated secrets file (keys: {_GENERATED_KEYS})")]
        )
    return {key: stored[key] for key in _GENERATED_KEYS}


def embedded_document(data_dir: Path) -> dict[str, Any]:
    """The configuration used when no file is given: SQLite, outbox, one ``default`` tenant."""
    generated = generated_secrets(data_dir)
    return {
        "server": {
            "data_dir": str(data_dir),
            "signing_keys": [{"id": "gen1", "secret": generated["signing_key"]}],
            "admin_jwt": {"algorithm": "HS256", "secret": generated["admin_jwt_secret"]},
        },
        "tenants": {EMBEDDED_TENANT: {"api_keys": [generated["api_key"]]}},
    }


def build_config(
    document: Mapping[str, Any],
    features: OrderedFeatures,
    sink_types: Iterable[SinkType],
    *,
    base_dir: Path,
    environ: Mapping[str, str] | None = None,
    embedded: bool = False,
    source: str = "(embedded default)",
    transport_types: Iterable[TransportType] = (),
) -> Config:
    """Resolve secrets, fill defaults, validate and freeze. Raises :class:`ConfigError`."""
    environ = os.environ if environ is None else environ
    sink_types = list(sink_types)
    transport_types = list(transport_types)
    resolved, problems = resolve_env(json.loads(json.dumps(document)), environ)
    schema = build_schema(features, sink_types, transport_types)
    if isinstance(resolved, dict):
        if isinstance(resolved.get("tenants"), dict):
            for tenant_id, tenant in resolved["tenants"].items():
                if tenant is None:  # "acme:" with nothing under it means all defaults
                    resolved["tenants"][tenant_id] = {}
        fill_defaults(resolved, schema)
        _fill_sink_defaults(resolved, sink_types)
        _fill_transport_defaults(resolved, transport_types)
    unset = [problem.path for problem in problems]
    problems.extend(
        problem
        for problem in validate(resolved, schema)
        # An unset variable is reported once, not again as a wrong value.
        if not any(_is_under(problem.path, path) for path in unset)
    )
    problems.extend(_check_semantics(resolved))
    env_base_url = environ.get(TRACKING_BASE_URL_ENV)
    if env_base_url and not re.match(
        CORE_SERVER_PROPERTIES["tracking_base_url"]["pattern"], env_base_url
    ):
        problems.append(
            ConfigProblem(
                f"${TRACKING_BASE_URL_ENV}",
                "must be an http(s) URL without query or fragment",
                env_base_url,
            )
        )
    if problems:
        raise ConfigError(problems)
    server = resolved["server"]
    data_dir = Path(server["data_dir"])
    if not data_dir.is_absolute():
        data_dir = (base_dir / data_dir).resolve()
    base_url = (
        env_base_url
        or server.get("tracking_base_url")
        or f"http://{_url_host(server['http']['host'])}:{server['http']['port']}"
    )
    return Config(
        tracking_base_url=base_url.rstrip("/"),
        bounce_domain=server.get("bounce_domain") or _default_bounce_domain(base_url),
        data_dir=data_dir,
        database_url=server.get("database_url") or f"sqlite:///{data_dir / 'scaisend.db'}",
        node_id=server["node_id"],
        http_host=server["http"]["host"],
        http_port=server["http"]["port"],
        max_body_bytes=server["http"]["max_body_bytes"],
        smtp_host=server["smtp"]["host"],
        smtp_port=server["smtp"]["port"],
        signing_keys=tuple(
            SigningKey(key["id"], key["secret"].encode()) for key in server["signing_keys"]
        ),
        admin_jwt=AdminJwt(
            algorithm=server["admin_jwt"]["algorithm"],
            issuer=server["admin_jwt"]["issuer"],
            secret=server["admin_jwt"].get("secret"),
            public_key=server["admin_jwt"].get("public_key"),
            private_key=server["admin_jwt"].get("private_key"),
        ),
        trusted_proxies=tuple(server["trusted_proxies"]),
        plugin_timeout=float(server["plugin_timeout_seconds"]),
        transport=freeze(server["transport"]),
        sinks=tuple(freeze(sink) for sink in server["sinks"]),
        feature_order=freeze(server["feature_order"]),
        tenants=MappingProxyType(
            {
                tenant_id: Tenant(
                    id=tenant_id,
                    api_keys=tuple(tenant["api_keys"]),
                    tracking=freeze(tenant["tracking"]),
                    plugins=freeze(tenant["plugins"]),
                )
                for tenant_id, tenant in resolved["tenants"].items()
            }
        ),
        embedded=embedded,
        source=source,
        smtp=freeze(server["smtp"]),
    )


def _fill_sink_defaults(document: dict[str, Any], sink_types: Sequence[SinkType]) -> None:
    by_type = {sink.type: sink for sink in sink_types}
    server = document.get("server")
    if not isinstance(server, dict) or not isinstance(server.get("sinks"), list):
        return
    for entry in server["sinks"]:
        if isinstance(entry, dict) and entry.get("type") in by_type:
            fill_defaults(entry, by_type[entry["type"]].options_schema)
            entry.setdefault("name", entry["type"])


def _is_under(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent + ".")


def _url_host(host: str) -> str:
    """``host`` as it appears in a URL: IPv6 addresses in brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _default_bounce_domain(base_url: str) -> str:
    host = urlsplit(base_url).hostname or "localhost"
    is_address = host.replace(".", "").isdigit() or ":" in host
    return "localhost" if is_address else host


def _fill_transport_defaults(
    document: dict[str, Any], transport_types: Sequence[TransportType]
) -> None:
    server = document.get("server")
    transport = server.get("transport") if isinstance(server, dict) else None
    if isinstance(transport, dict):
        for transport_type in transport_types:
            if transport.get("type") == transport_type.type:
                fill_defaults(transport, transport_type.options_schema)


def _items(document: Any, *path: str) -> list[tuple[int, dict[str, Any]]]:
    """The mapping entries of the list at ``path``, with their indexes; [] if anything is off."""
    for key in path:
        document = document.get(key) if isinstance(document, dict) else None
    if not isinstance(document, list):
        return []
    return [(index, item) for index, item in enumerate(document) if isinstance(item, dict)]


def _check_semantics(document: Any) -> list[ConfigProblem]:
    """What JSON Schema cannot say: uniqueness across lists and mappings.

    Runs on documents that may also fail the schema, so every check looks before it reads.
    """
    problems = []
    seen: set[Any] = set()
    for index, key in _items(document, "server", "signing_keys"):
        key_id = key.get("id")
        if not isinstance(key_id, str):
            continue
        if key_id in seen:
            problems.append(
                ConfigProblem(f"server.signing_keys.{index}.id", "key id is used twice", key_id)
            )
        seen.add(key_id)
    seen = set()
    for index, sink in _items(document, "server", "sinks"):
        name = sink.get("name")
        if not isinstance(name, str):
            continue
        if name in seen:
            problems.append(
                ConfigProblem(
                    f"server.sinks.{index}.name", "sink name is used twice; give each a name", name
                )
            )
        seen.add(name)
    owners: dict[str, str] = {}
    tenants = document.get("tenants") if isinstance(document, dict) else None
    for tenant_id, tenant in tenants.items() if isinstance(tenants, dict) else ():
        keys = tenant.get("api_keys") if isinstance(tenant, dict) else None
        for index, key in enumerate(keys if isinstance(keys, list) else ()):
            if not isinstance(key, str):
                continue
            if key in owners:
                owner = owners[key]
                problems.append(
                    ConfigProblem(
                        f"tenants.{tenant_id}.api_keys.{index}",
                        "API key is listed twice"
                        if owner == tenant_id
                        else f"API key is also a key of tenant {owner!r}",
                        "***",
                    )
                )
            owners.setdefault(key, tenant_id)
    return problems


def load_document(path: Path | None) -> tuple[dict[str, Any], Path, bool, str]:
    """The raw document to build from: ``path``, else ``$SCAISEND_CONFIG``, else embedded."""
    if path is None and os.environ.get(CONFIG_ENV):
        path = Path(os.environ[CONFIG_ENV])
    if path is None:
        cwd = Path.cwd()
        return embedded_document(cwd / EMBEDDED_DATA_DIR), cwd, True, "(embedded default)"
    return read_yaml(path), path.resolve().parent, False, str(path)
