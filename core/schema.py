"""The configuration's JSON Schema: core's part plus every feature's and sink type's part."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from typing import Any

from core.features import Feature, OrderedFeatures
from core.sinks import SinkType
from core.transports import TransportType

TENANT_ID_PATTERN = "^[a-z0-9][a-z0-9_-]{0,63}$"
KEY_ID_PATTERN = "^[A-Za-z0-9_-]{1,16}$"

SECRET = {"type": "string", "minLength": 32}
HOSTNAME_PATTERN = (
    "^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    "(\\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)

CORE_SERVER_PROPERTIES: dict[str, Any] = {
    "tracking_base_url": {
        "type": "string",
        "pattern": "^https?://[^/?#\\s]+(/[^?#\\s]*)?$",
        "description": "public base URL of the tracking routes; TRACKING_BASE_URL overrides "
        "it; default: http://HOST:PORT of server.http",
    },
    "bounce_domain": {
        "type": "string",
        "pattern": HOSTNAME_PATTERN,
        "description": "domain of the per-recipient envelope senders (VERP), which the inbound "
        "SMTP listener accepts bounces for; default: the tracking base URL's host",
    },
    "data_dir": {
        "type": "string",
        "minLength": 1,
        "default": "scaisend-data",
        "description": "where the journal, outbox and SQLite database live",
    },
    "database_url": {
        "type": "string",
        "pattern": "^(sqlite|postgres|postgresql)://",
        "description": "sqlite:///PATH or postgresql://USER:PASS@HOST/DB; "
        "default: SQLite in the data directory",
    },
    "node_id": {
        "type": "string",
        "pattern": "^[A-Za-z0-9_.-]{1,64}$",
        "default": "main",
        "description": "unique per process sharing a data directory",
    },
    "http": {
        "type": "object",
        "additionalProperties": False,
        "default": {},
        "properties": {
            "host": {"type": "string", "default": "127.0.0.1"},
            "port": {"type": "integer", "minimum": 0, "maximum": 65535, "default": 8000},
            "max_body_bytes": {"type": "integer", "minimum": 1024, "default": 30 * 1024 * 1024},
        },
    },
    "smtp": {
        "type": "object",
        "additionalProperties": False,
        "default": {},
        "properties": {
            "host": {"type": "string", "default": "127.0.0.1"},
            "port": {"type": "integer", "minimum": 0, "maximum": 65535, "default": 2525},
            "feedback_domains": {
                "type": "array",
                "default": [],
                "items": {"type": "string", "pattern": HOSTNAME_PATTERN},
                "description": "domains whose addresses receive complaint (ARF) reports, "
                "accepted beside the bounce domain",
            },
            "max_message_bytes": {"type": "integer", "minimum": 1024, "default": 10 * 1024 * 1024},
            "max_recipients": {"type": "integer", "minimum": 1, "default": 100},
            "max_sessions": {
                "type": "integer",
                "minimum": 1,
                "default": 50,
                "description": "SMTP sessions open at once; one more is answered 421 and closed",
            },
            "max_kept_bytes": {
                "type": "integer",
                "minimum": 0,
                "default": 1024**3,
                "description": "bytes kept in each of inbound/unclaimed and inbound/unattributed; "
                "the oldest messages beyond it are removed (the newest always stays)",
            },
            "tls": {
                "type": "object",
                "additionalProperties": False,
                "required": ["cert_file", "key_file"],
                "description": "offer STARTTLS with this PEM certificate chain and key",
                "properties": {
                    "cert_file": {"type": "string", "minLength": 1},
                    "key_file": {"type": "string", "minLength": 1},
                },
            },
        },
    },
    "signing_keys": {
        "type": "array",
        "minItems": 1,
        "description": "token keys; the first signs, all verify (rotate by prepending)",
        "items": {
            "type": "object",
            "additionalProperties": False,
            "required": ["id", "secret"],
            "properties": {"id": {"type": "string", "pattern": KEY_ID_PATTERN}, "secret": SECRET},
        },
    },
    "admin_jwt": {
        "type": "object",
        "additionalProperties": False,
        "required": ["algorithm"],
        "properties": {
            "algorithm": {"enum": ["HS256", "RS256"]},
            "secret": SECRET,
            "public_key": {"type": "string", "pattern": "-----BEGIN PUBLIC KEY-----"},
            "private_key": {"type": "string", "pattern": "-----BEGIN (RSA )?PRIVATE KEY-----"},
            "issuer": {"type": "string", "default": "scaisend"},
        },
        "allOf": [
            {
                "if": {"properties": {"algorithm": {"const": "HS256"}}},
                "then": {"required": ["secret"]},
            },
            {
                "if": {"properties": {"algorithm": {"const": "RS256"}}},
                "then": {"required": ["public_key"]},
            },
        ],
    },
    "trusted_proxies": {
        "type": "array",
        "default": [],
        "items": {"type": "string", "minLength": 1},
        "description": "addresses or CIDR ranges whose X-Forwarded-For is believed",
    },
    "plugin_timeout_seconds": {"type": "number", "exclusiveMinimum": 0, "default": 2.0},
}


def fill_defaults(instance: Any, schema: Mapping[str, Any]) -> Any:
    """Fill ``default`` values of object properties, recursively, in place; returns instance.

    Only objects are descended into (``properties`` and ``additionalProperties``), which is
    where every default of ours lives.
    """
    if not isinstance(instance, MutableMapping) or schema.get("type") not in ("object", None):
        return instance
    properties = schema.get("properties", {})
    for name, subschema in properties.items():
        if name not in instance and "default" in subschema:
            instance[name] = copy.deepcopy(subschema["default"])
        if name in instance:
            fill_defaults(instance[name], subschema)
    extra = schema.get("additionalProperties")
    if isinstance(extra, Mapping):
        for name, value in instance.items():
            if name not in properties:
                fill_defaults(value, extra)
    return instance


def tracking_schema(features: OrderedFeatures) -> dict[str, Any]:
    """Schema of a tenant's tracking settings: one object per feature."""
    return {
        "type": "object",
        "additionalProperties": False,
        "default": {},
        "properties": {
            feature.name: {**feature.settings_schema, "default": {}} for feature in features
        },
    }


def sink_entry_schema(sink_type: SinkType) -> dict[str, Any]:
    options = sink_type.options_schema
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["type"],
        "properties": {
            "type": {"const": sink_type.type},
            "name": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"},
            **options.get("properties", {}),
        },
    }


def transport_schema(transport_types: Sequence[TransportType]) -> dict[str, Any]:
    """``server.transport``: one of the registered transport types with its options."""
    return {
        "type": "object",
        "default": {"type": "outbox"},
        "required": ["type"],
        "properties": {"type": {"enum": [t.type for t in transport_types]}},
        "allOf": [
            {
                "if": {"properties": {"type": {"const": t.type}}, "required": ["type"]},
                "then": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "type": {"const": t.type},
                        **t.options_schema.get("properties", {}),
                    },
                    **(
                        {"required": t.options_schema["required"]}
                        if "required" in t.options_schema
                        else {}
                    ),
                },
            }
            for t in transport_types
        ],
    }


def build_schema(
    features: OrderedFeatures,
    sink_types: Iterable[SinkType],
    transport_types: Iterable[TransportType] = (),
    *,
    secrets_required: bool = True,
) -> dict[str, Any]:
    """The whole configuration schema for this set of plugins."""
    sink_types = list(sink_types)
    transport_types = list(transport_types)
    sinks_item: dict[str, Any] = {
        "type": "object",
        "required": ["type"],
        "properties": {"type": {"enum": [sink.type for sink in sink_types]}},
        "allOf": [
            {
                "if": {"properties": {"type": {"const": sink.type}}, "required": ["type"]},
                "then": sink_entry_schema(sink),
            }
            for sink in sink_types
        ],
    }
    server: dict[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "default": {},
        "properties": {
            **CORE_SERVER_PROPERTIES,
            "transport": transport_schema(transport_types),
            "sinks": {
                "type": "array",
                "items": sinks_item,
                "default": [{"type": "database"}, {"type": "jsonl"}],
            },
            "feature_order": {
                "type": "object",
                "default": {},
                "propertyNames": {"enum": [feature.name for feature in features]},
                "additionalProperties": {"type": "integer"},
            },
        },
    }
    if secrets_required:
        server["required"] = ["signing_keys", "admin_jwt"]
    plugin_configs = {
        feature.name: {**feature.config_schema, "default": {}}
        for feature in features
        if feature.config_schema is not None
    }
    tenant = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "api_keys": {
                "type": "array",
                "default": [],
                "items": {"type": "string", "minLength": 24},
                "description": "keys for the send and management APIs (Authorization: Bearer)",
            },
            "tracking": tracking_schema(features),
            "plugins": {
                "type": "object",
                "additionalProperties": False,
                "default": {},
                "properties": plugin_configs,
            },
        },
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "additionalProperties": False,
        "required": ["tenants"],
        "properties": {
            "server": server,
            "tenants": {
                "type": "object",
                "minProperties": 1,
                "propertyNames": {"pattern": TENANT_ID_PATTERN},
                "additionalProperties": tenant,
            },
        },
    }


def feature_defaults(feature: Feature) -> dict[str, Any]:
    """The built-in settings layer of one feature: its schema's defaults."""
    result: dict[str, Any] = fill_defaults({}, feature.settings_schema)
    return result
