"""The layering that decides what a send does.

Built-in defaults (each feature schema's ``default`` values), then the tenant's YAML, then the
tenant's stored admin overrides, then the request's ``tracking_settings``: deep-merged in that
order, and the result validated against the features' schemas.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from core.config import Tenant, thaw
from core.features import OrderedFeatures
from core.schema import feature_defaults, tracking_schema


class SettingsError(ValueError):
    """Settings that fail their schema; ``field`` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


_KNOWN_LIMIT = 256


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """A new dict: ``override`` over ``base``; nested mappings merge, anything else replaces."""
    merged: dict[str, Any] = thaw(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(thaw(value))
    return merged


@dataclass(frozen=True)
class SettingsLayers:
    """Knows every feature's schema and defaults; merges and checks settings layers."""

    features: OrderedFeatures
    # Effective settings already worked out and checked, as JSON text (decoding it gives each
    # caller its own copy), by their layers as JSON text: the sends of one tenant mostly repeat
    # the same few combinations.
    _known: dict[str, str] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def schema(self) -> dict[str, Any]:
        return tracking_schema(self.features)

    @functools.cached_property
    def _validator(self) -> jsonschema.protocols.Validator:
        return jsonschema.Draft202012Validator(self.schema)

    def builtin(self) -> dict[str, Any]:
        return {feature.name: feature_defaults(feature) for feature in self.features}

    def effective(
        self,
        tenant: Tenant,
        stored: Mapping[str, Any] | None = None,
        request: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The settings one send runs with. Raises :class:`SettingsError`."""
        try:
            key = json.dumps(
                [tenant.id, thaw(tenant.tracking), stored or {}, request or {}],
                sort_keys=True,
                separators=(",", ":"),
            )
        except (TypeError, ValueError):
            key = None  # not JSON data (no request body holds such values): work it out
        if key is not None and (known := self._known.get(key)) is not None:
            copied: dict[str, Any] = json.loads(known)
            return copied
        merged = deep_merge(self.builtin(), tenant.tracking)
        if stored:
            merged = deep_merge(merged, stored)
        if request:
            merged = deep_merge(merged, request)
        self.check(merged)
        if key is not None:
            text = json.dumps(merged)
            if json.loads(text) == merged:  # JSON keeps it exactly (no tuple, no int key)
                if len(self._known) >= _KNOWN_LIMIT:
                    self._known.clear()
                self._known[key] = text
        return merged

    def check(self, settings: Mapping[str, Any], prefix: str = "") -> None:
        validator = self._validator
        if validator.is_valid(settings):
            return
        error = jsonschema.exceptions.best_match(validator.iter_errors(settings))
        if error is not None:
            path = ".".join(str(part) for part in error.absolute_path)
            raise SettingsError(
                prefix + path if path else prefix.rstrip(".") or "(settings)", error.message
            )

    # The admin API speaks the flat vocabulary of the tracking docs
    # (``click_tracking_enabled``); storage and sends use the nested one
    # (``click_tracking.enable``).

    def aliases(self) -> dict[str, tuple[str, str]]:
        return {
            alias: (feature.name, field)
            for feature in self.features
            for alias, field in feature.admin_aliases().items()
        }

    def unflatten(self, flat: Mapping[str, Any]) -> dict[str, Any]:
        """Nested settings from admin-API fields. Raises :class:`SettingsError` on unknown ones."""
        aliases = self.aliases()
        nested: dict[str, Any] = {}
        for name, value in flat.items():
            if name not in aliases:
                raise SettingsError(name, "unknown tracking setting")
            feature, field = aliases[name]
            nested.setdefault(feature, {})[field] = value
        return nested

    def flatten(self, nested: Mapping[str, Any]) -> dict[str, Any]:
        return {
            alias: nested[feature][field]
            for alias, (feature, field) in self.aliases().items()
            if field in nested.get(feature, {})
        }

    def field_alias(self, feature: str, field: str) -> str:
        for alias, target in self.aliases().items():
            if target == (feature, field):
                return alias
        return f"{feature}.{field}"
