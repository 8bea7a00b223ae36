"""Bounces (DSNs) and complaints (ARF) from the inbound SMTP port: parsed, attributed to the
copy ScaiSend sent, and recorded as events and suppressions.

Auto-replies and delivery notices are recognised and claimed without effect; anything that is
not a report is left to core, which keeps it. A report naming no copy ScaiSend sent is kept in
``data_dir/inbound/unattributed/`` and logged.
"""

from __future__ import annotations

import anyio
import structlog

from core.hookspecs import hookimpl
from core.inbound import UNATTRIBUTED_DIR, InboundMessage, keep
from core.runtime import Runtime
from plugins.inbound_dsn.attribution import Attributor
from plugins.inbound_dsn.commands import register_commands as register_commands
from plugins.inbound_dsn.effects import apply
from plugins.inbound_dsn.parse import parse_message
from plugins.inbound_dsn.report import Report

log = structlog.get_logger("scaisend.inbound_dsn")

WITHOUT_EFFECT = frozenset({"vacation", "delivered"})


@hookimpl
async def handle_inbound_mail(message: InboundMessage, runtime: Runtime) -> str | None:
    try:
        report = await anyio.to_thread.run_sync(parse_message, message.data)
    except Exception as exc:  # noqa: BLE001 - an unparsable message is core's to keep
        log.warning("inbound_dsn.unparsable", error=repr(exc), peer=message.peer)
        return None
    if report.kind in WITHOUT_EFFECT:
        log.info("inbound_dsn.ignored", kind=report.kind, peer=message.peer)
        return "ignored"
    if report.kind not in ("bounce", "feedback"):
        return None
    return await anyio.to_thread.run_sync(process, message, report, runtime)


def process(message: InboundMessage, report: Report, runtime: Runtime) -> str:
    """Attribute and apply one report (blocking); what was done."""
    unattributed: list[str] = []
    recorded = 0
    attributions = Attributor(runtime).attribute(message, report)
    for attribution in attributions:
        target = attribution.target
        if target is None:
            unattributed.append(attribution.item.recipient)
            continue
        event = apply(runtime, report, attribution.item, target)
        recorded += event is not None
        log.info(
            "inbound_dsn.attributed",
            event_type=event,
            tenant=target.tenant,
            message_id=target.message_id,
            recipient_number=target.number,
            attribution=target.method,
            status=attribution.item.status,
            reason=attribution.item.reason,
        )
    if unattributed or not attributions:
        path = keep(message, runtime.config.data_dir / UNATTRIBUTED_DIR)
        log.warning(
            "inbound_dsn.unattributed",
            path=str(path),
            kind=report.kind,
            recipients=unattributed,
            original_message_id=report.original_message_id,
            peer=message.peer,
        )
    if not recorded and (unattributed or not attributions):
        return "unattributed"
    return "complaint" if report.kind == "feedback" else "bounce"
