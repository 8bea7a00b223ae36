"""Running the ``instrument`` hook: each enabled feature, in order, isolated from the others."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from core.config import Tenant
from core.pipeline import CompiledDocument, Document, EditConflict, Recipient, Slot
from core.runtime import Plugins
from core.tokens import TokenCodec

log = structlog.get_logger("scaisend.instrument")


@dataclass
class InstrumentContext:
    """What a feature's ``instrument`` hook knows about the send it instruments.

    ``settings`` are this feature's effective settings; ``all_settings`` those of every
    feature. ``state`` is shared by all features of one message, for a later feature to read
    what an earlier one recorded.
    """

    feature: str
    settings: Mapping[str, Any]
    all_settings: Mapping[str, Any]
    tenant: Tenant
    message_id: str
    tracking_base_url: str
    tokens: TokenCodec
    state: dict[str, Any] = field(default_factory=dict)

    def tracking_url(self, path: str) -> Slot:
        """A slot for ``{tracking base}{path}`` with ``{token}`` set to the recipient's token."""
        prefix, marker, suffix = (self.tracking_base_url + path).partition("{token}")
        if not marker:
            constant = prefix

            def constant_url(recipient: Recipient) -> str:
                return constant

            return constant_url

        def url(recipient: Recipient) -> str:
            return prefix + recipient.token + suffix

        return url


def is_enabled(settings: Mapping[str, Any]) -> bool:
    return bool(settings.get("enable", True))


def instrument(
    plugins: Plugins,
    document: Document,
    *,
    tenant: Tenant,
    settings: Mapping[str, Any],
    message_id: str,
    tracking_base_url: str,
    tokens: TokenCodec,
) -> tuple[CompiledDocument, list[str]]:
    """Instrument ``document`` with every enabled feature; the compiled result and the features
    that applied. A feature that fails or overruns is logged and left out; the rest apply."""
    applied: list[str] = []
    state: dict[str, Any] = {}
    for feature in plugins.features:
        feature_settings = settings.get(feature.name, {})
        if not is_enabled(feature_settings):
            continue
        owner = plugins.owners[feature.name]
        impls = [
            impl
            for impl in plugins.host.implementations("instrument")
            if impl.plugin is owner.plugin
        ]
        if not impls:
            continue
        ctx = InstrumentContext(
            feature=feature.name,
            settings=feature_settings,
            all_settings=settings,
            tenant=tenant,
            message_id=message_id,
            tracking_base_url=tracking_base_url,
            tokens=tokens,
            state=state,
        )
        staged = document.stage(feature.name)
        ok = all(
            plugins.host.call_sync("instrument", impl, doc=staged, ctx=ctx)[0] for impl in impls
        )
        if not ok:
            continue
        try:
            staged.commit()
        except EditConflict as exc:
            log.error(
                "plugin.failed",
                hook="instrument",
                plugin=owner.plugin_name,
                feature=feature.name,
                error=str(exc),
            )
            continue
        applied.append(feature.name)
    return document.compile(), applied
