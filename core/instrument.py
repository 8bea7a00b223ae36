"""Running the ``instrument`` hook: each enabled feature, in order, isolated from the others."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from core.config import Tenant
from core.pipeline import CompiledDocument, Document, Recipient, Slot, StagedDocument
from core.plugins import Implementation
from core.runtime import Plugins
from core.tokens import TokenCodec


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


def _feature_step(
    document: Document, feature: str, impls: list[Implementation], ctx: InstrumentContext
) -> Callable[[], StagedDocument]:
    """One feature's edits, staged against ``document`` as it stands when the step runs (after
    every earlier feature's edits were merged) and merged only if all of them succeed."""

    def step() -> StagedDocument:
        staged = document.stage(feature)
        for impl in impls:
            impl.function(**impl.kwargs({"doc": staged, "ctx": ctx}))
        return staged

    return step


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
    state: dict[str, Any] = {}
    steps: list[tuple[Implementation, Callable[[], Any]]] = []
    names: list[str] = []
    implementations = plugins.host.implementations("instrument")
    for feature in plugins.features:
        feature_settings = settings.get(feature.name, {})
        if not is_enabled(feature_settings):
            continue
        owner = plugins.owners[feature.name]
        impls = [impl for impl in implementations if impl.plugin is owner.plugin]
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
        steps.append((impls[0], _feature_step(document, feature.name, impls, ctx)))
        names.append(feature.name)
    # One hand-over to a worker thread for every feature of the message: each feature still
    # runs within its own budget, and its edits are merged before the next feature starts.
    outcomes = plugins.host.call_in_order(
        "instrument", steps, then=lambda _, staged: staged.commit()
    )
    applied = [name for name, (ok, _) in zip(names, outcomes, strict=True) if ok]
    return document.compile(), applied
