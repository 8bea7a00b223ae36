"""What a feature declares about itself: name, place in the pipeline, and settings schemas."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

JSONSchema = Mapping[str, Any]


@dataclass(frozen=True)
class Feature:
    """A tracking feature contributed by a plugin.

    ``settings_schema`` describes the feature's per-tenant tracking settings: the object found
    at ``tenants.<id>.tracking.<name>`` in YAML, overridable by the admin API and by a send's
    ``tracking_settings.<name>``. Every property should carry a ``default``; those defaults are
    the built-in layer of the settings. ``config_schema`` describes static per-tenant plugin
    configuration (``tenants.<id>.plugins.<name>``), which no request can override.

    ``order`` places the feature in the instrumenting pipeline: lower runs first. Built-in
    features use multiples of ten so a third party can slot in between; operators may override
    any feature's order in YAML (``server.feature_order``).

    ``aliases`` maps the flat field names of the admin API (``open_tracking_enabled``) to
    fields of ``settings_schema`` (``enable``). Fields without an explicit alias get
    ``<name>_<field>``, and ``enable`` gets ``<name>_enabled``.
    """

    name: str
    order: int
    settings_schema: JSONSchema = field(default_factory=lambda: {"type": "object"})
    config_schema: JSONSchema | None = None
    aliases: Mapping[str, str] = field(default_factory=dict)
    description: str = ""

    def admin_aliases(self) -> dict[str, str]:
        """Flat admin-API field name -> settings field, for every settings property."""
        properties = self.settings_schema.get("properties", {})
        explicit = {settings_field: alias for alias, settings_field in self.aliases.items()}
        result: dict[str, str] = {}
        for settings_field in properties:
            if settings_field in explicit:
                alias = explicit[settings_field]
            elif settings_field == "enable":
                alias = f"{self.name}_enabled"
            else:
                alias = f"{self.name}_{settings_field}"
            result[alias] = settings_field
        return result


@dataclass(frozen=True)
class OrderedFeatures:
    """Features sorted by their effective order (ties broken by name, so order is total)."""

    features: tuple[Feature, ...]

    @classmethod
    def build(
        cls, features: Iterable[Feature], overrides: Mapping[str, int] | None = None
    ) -> OrderedFeatures:
        overrides = overrides or {}
        seen: dict[str, Feature] = {}
        for feature in features:
            if feature.name in seen:
                raise ValueError(f"feature {feature.name!r} is registered twice")
            seen[feature.name] = feature
        unknown = sorted(set(overrides) - set(seen))
        if unknown:
            raise ValueError(f"feature_order names unknown features: {', '.join(unknown)}")

        placed = [
            replace(feature, order=overrides[feature.name])
            if feature.name in overrides
            else feature
            for feature in seen.values()
        ]
        return cls(tuple(sorted(placed, key=lambda feature: (feature.order, feature.name))))

    def __iter__(self) -> Iterator[Feature]:
        return iter(self.features)

    def __len__(self) -> int:
        return len(self.features)

    def names(self) -> list[str]:
        return [feature.name for feature in self.features]

    def get(self, name: str) -> Feature | None:
        for feature in self.features:
            if feature.name == name:
                return feature
        return None
