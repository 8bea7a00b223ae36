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
import structlog

from core import jsontext
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

log = structlog.get_logger("scaisend.settings")


def _key_text(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _leaves(value: Any) -> int:
    if isinstance(value, Mapping):
        return sum(_leaves(item) for item in value.values()) or 1
    return 1


def _has_path(settings: Mapping[str, Any], path: list[str]) -> bool:
    node: Any = settings
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def _drop(settings: dict[str, Any], path: list[str]) -> bool:
    """Remove the deepest stored entry on ``path`` (the whole of it when it is stored);
    whether anything was removed."""
    node: Any = settings
    parents: list[tuple[dict[str, Any], str]] = []
    for part in path:
        if not isinstance(node, dict) or part not in node:
            break
        parents.append((node, part))
        node = node[part]
    if not parents:
        return False
    container, key = parents[-1]
    del container[key]
    return True


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
    # Stored overrides that still apply, by the layers they were worked out from.
    _applicable: dict[str, str] = field(default_factory=dict, init=False, repr=False, compare=False)
    # Each tenant's YAML settings as JSON text, with the (immutable) mapping it was made from.
    _tenant_text: dict[str, tuple[Mapping[str, Any], str]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

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
            layers = (_key_text(stored or {}), _key_text(request or {}))
            key = f"[{self._tracking_text(tenant)},{layers[0]},{layers[1]}]"
        except (TypeError, ValueError):
            key = None  # not JSON data (no request body holds such values): work it out
        if key is not None and (known := self._known.get(key)) is not None:
            copied: dict[str, Any] = jsontext.loads(known)
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

    def _tracking_text(self, tenant: Tenant) -> str:
        """``tenant``'s id and YAML settings as key text, worked out once per config: the
        frozen mapping is walked through ``Mapping`` checks, which cost more than the rest of
        the key."""
        known = self._tenant_text.get(tenant.id)
        if known is None or known[0] is not tenant.tracking:
            known = (tenant.tracking, _key_text([tenant.id, thaw(tenant.tracking)]))
            self._tenant_text[tenant.id] = known
        return known[1]

    def applicable(
        self, tenant: Tenant, stored: Mapping[str, Any], keep: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """The stored overrides that still pass the features' schemas for ``tenant``.

        An override was valid when it was stored, but a plugin upgrade can narrow a schema or
        drop a feature, and one stale value must not stop every send of the tenant nor its
        admin API. Each field that fails is left out (logged as ``settings.override_ignored``,
        never deleted: a later schema may accept it again), except fields of ``keep`` (an
        update being made), whose errors are raised as :class:`SettingsError`.
        """
        key = None
        if keep is None:  # what a send asks for again and again: worked out (and logged) once
            key = f"[{self._tracking_text(tenant)},{_key_text(stored)}]"
            if (known_usable := self._applicable.get(key)) is not None:
                copied: dict[str, Any] = jsontext.loads(known_usable)
                return copied
        usable = self._usable(tenant, stored, keep)
        if key is not None:
            if len(self._applicable) >= _KNOWN_LIMIT:
                self._applicable.clear()
            self._applicable[key] = json.dumps(usable)
        return usable

    def _usable(
        self, tenant: Tenant, stored: Mapping[str, Any], keep: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        known = {feature.name for feature in self.features}
        usable = {name: thaw(value) for name, value in stored.items() if name in known}
        for name in stored.keys() - known:
            log.warning("settings.override_ignored", tenant=tenant.id, field=name, reason="unknown")
        for _ in range(_leaves(usable) + 1):
            try:
                self.effective(tenant, usable)
                return usable
            except SettingsError as exc:
                path = exc.field.split(".")
                if keep is not None and _has_path(keep, path[:2]):
                    raise  # the update itself is wrong
                if not _drop(usable, path):
                    if keep is not None:
                        raise  # not a stored field's fault: refuse rather than guess
                    break
                log.warning(
                    "settings.override_ignored",
                    tenant=tenant.id,
                    field=exc.field,
                    reason=exc.message,
                )
        log.warning("settings.overrides_ignored", tenant=tenant.id)
        return {}

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
