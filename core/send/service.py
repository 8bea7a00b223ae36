"""Sending: validate, instrument once, record, stamp every recipient and hand to the transport.

The same service backs ``POST /v3/mail/send``, the Python API and ``scaisend send``.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import structlog

from core.config import Tenant
from core.events import Event
from core.instrument import instrument
from core.pipeline import CompiledDocument, Document, Recipient, Template
from core.runtime import Runtime
from core.send.compose import FieldError, SendError, Submission, parse_submission
from core.send.mime import MessageTemplate, compile_message
from core.send.spool import Spool
from core.send.verp import VerpCodec
from core.settings import SettingsError
from core.storage import Message, MessageRecipient
from core.suppressions import Kind, normalise
from core.transports import DeliveryResult, OutgoingMessage

log = structlog.get_logger("scaisend.send")

SUBSTITUTIONS = "substitutions"
"""The name core's own edits go by: substitution keys replaced per recipient."""

DELIVERY_BATCH = 200

DROP_REASONS: Mapping[Kind, str] = {
    "unsubscribe": "Unsubscribed Address",
    "group_unsubscribe": "Unsubscribed Address",
    "bounce": "Bounced Address",
    "spamreport": "Spam Reporting Address",
}
"""The ``reason`` of a ``dropped`` event, by the suppression list that stopped the copy."""


@dataclass(frozen=True)
class PreparedSend:
    """A send compiled once: everything needed to render any recipient's copy."""

    message_id: str
    tenant: Tenant
    body: Any
    submission: Submission
    settings: Mapping[str, Any]
    features: tuple[str, ...]
    document: CompiledDocument
    templates: tuple[MessageTemplate, ...]
    recipients: tuple[Recipient, ...]

    def render(self, recipient: Recipient, verp: VerpCodec, bounce_domain: str) -> OutgoingMessage:
        spec = self.submission.recipients[recipient.index]
        return OutgoingMessage(
            tenant=self.tenant.id,
            message_id=self.message_id,
            recipient=recipient.index,
            mail_from=verp.address(self.message_id, recipient.index, bounce_domain),
            rcpt_to=spec.address.email,
            data=self.templates[spec.personalization].render(recipient),
        )


def _substitution_slot(key: str) -> Callable[[Recipient], str]:
    def value(recipient: Recipient) -> str:
        return recipient.substitutions.get(key, key)

    return value


def _substitute(document: Document, keys: list[str]) -> None:
    """Core's own pass: each substitution key becomes a per-recipient slot."""
    staged = document.stage(SUBSTITUTIONS)
    for part in (staged.html, staged.text):
        if part is None:
            continue
        for key in keys:
            for offset in part.find_all(key):
                if part.is_free(offset, offset + len(key)):
                    part.replace(offset, offset + len(key), _substitution_slot(key))
    staged.commit()


def _subject_template(subject: str, keys: list[str]) -> Template:
    document = Document(text=subject)
    _substitute(document, keys)
    compiled = document.compile().text
    assert compiled is not None
    return compiled


class SendService:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.verp = VerpCodec(runtime.config.signing_keys)
        self.spool = Spool(runtime.config.data_dir / "spool")

    def prepare(
        self,
        tenant: Tenant,
        body: Any,
        *,
        message_id: str | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> PreparedSend:
        """Validate and compile a send. Raises :class:`SendError` listing every problem.

        ``message_id`` and ``settings`` are given when a spooled send is resumed, so its copies
        come out as they would have the first time.
        """
        submission = parse_submission(body)
        if settings is None:
            try:
                settings = self.runtime.effective_settings(tenant, submission.tracking_settings)
            except SettingsError as exc:
                raise SendError(
                    [FieldError(f"tracking_settings.{exc.field}", exc.message)]
                ) from exc
        message_id = message_id or uuid.uuid4().hex
        keys = sorted(
            {key for p in submission.personalizations for key in p.substitutions},
            key=len,
            reverse=True,  # longest first, so "-name-" wins over "-n" inside it
        )
        document = Document(html=submission.html, text=submission.text)
        if keys:
            _substitute(document, keys)
        compiled, applied = instrument(
            self.runtime.plugins,
            document,
            tenant=tenant,
            settings=settings,
            message_id=message_id,
            tracking_base_url=self.runtime.config.tracking_base_url,
            tokens=self.runtime.tokens,
        )
        id_domain = submission.sender.email.rpartition("@")[2]
        templates = tuple(
            compile_message(
                submission,
                personalization,
                message_id=message_id,
                id_domain=id_domain,
                html=compiled.html,
                text=compiled.text,
                subject=_subject_template(personalization.subject, keys),
                feature_headers=compiled.headers,
            )
            for personalization in submission.personalizations
        )
        tokens = self.runtime.tokens
        recipients = tuple(
            Recipient(
                index=spec.number,
                email=spec.address.email,
                token=tokens.issue(tenant.id, message_id, spec.number),
                substitutions=submission.personalizations[spec.personalization].substitutions,
            )
            for spec in submission.recipients
        )
        return PreparedSend(
            message_id=message_id,
            tenant=tenant,
            body=body,
            submission=submission,
            settings=settings,
            features=tuple(applied),
            document=compiled,
            templates=templates,
            recipients=recipients,
        )

    def persist(self, prepared: PreparedSend) -> None:
        """Spool the send, record the message and its recipients, journal ``processed`` events.

        Once this returns the send survives a crash: the server resumes it on start.
        """
        submission = prepared.submission
        self.spool.put(
            prepared.message_id, prepared.tenant.id, prepared.body, dict(prepared.settings)
        )
        try:
            self._record_message(prepared)
        except Exception:
            self.spool.remove(prepared.message_id)
            raise
        for spec in submission.recipients:
            self.runtime.emit(self._event("processed", prepared, spec.number, {}))

    def _record_message(self, prepared: PreparedSend) -> None:
        submission = prepared.submission
        db = self.runtime.db
        with db.connection_context(), db.atomic():
            Message.create(
                id=prepared.message_id,
                tenant=prepared.tenant.id,
                subject=submission.personalizations[0].subject,
                settings=dict(prepared.settings),
                data={
                    "from": submission.sender.email,
                    "categories": list(submission.categories),
                    "custom_args": dict(submission.custom_args),
                    "asm": dict(submission.asm) if submission.asm else None,
                    "features": list(prepared.features),
                },
            )
            rows = [
                {"message": prepared.message_id, "number": spec.number, "email": spec.address.email}
                for spec in submission.recipients
            ]
            for start in range(0, len(rows), 500):
                MessageRecipient.insert_many(rows[start : start + 500]).execute()

    def _event(
        self, kind: str, prepared: PreparedSend, number: int, data: Mapping[str, Any]
    ) -> Event:
        submission = prepared.submission
        spec = submission.recipients[number]
        personalization = submission.personalizations[spec.personalization]
        return Event(
            type=kind,
            tenant=prepared.tenant.id,
            message_id=prepared.message_id,
            recipient=spec.address.email,
            data={
                "recipient_number": number,
                **({"categories": list(submission.categories)} if submission.categories else {}),
                **(
                    {"custom_args": dict(personalization.custom_args)}
                    if personalization.custom_args
                    else {}
                ),
                **data,
            },
        )

    def outgoing(
        self, prepared: PreparedSend, skip: frozenset[int] = frozenset()
    ) -> Iterator[OutgoingMessage]:
        domain = self.runtime.config.bounce_domain
        for recipient in prepared.recipients:
            if recipient.index not in skip:
                yield prepared.render(recipient, self.verp, domain)

    async def deliver(
        self,
        prepared: PreparedSend,
        progress: Callable[[int], None] | None = None,
        skip: frozenset[int] = frozenset(),
    ) -> list[DeliveryResult]:
        """Stamp and deliver every copy (but those in ``skip``) in batches; an event per result."""
        transport = self.runtime.transport()
        dropped = await anyio.to_thread.run_sync(self._drop_suppressed, prepared, skip)
        if dropped and progress is not None:
            progress(len(dropped))
        skip = skip | dropped
        results: list[DeliveryResult] = []
        batch: list[OutgoingMessage] = []

        async def flush() -> None:
            outcomes = await transport.deliver(batch)
            for message, result in zip(batch, outcomes, strict=True):
                self._record(prepared, message, result)
            await anyio.to_thread.run_sync(
                self.spool.mark_done, prepared.message_id, [m.recipient for m in batch]
            )
            results.extend(outcomes)
            if progress is not None:
                progress(len(batch))
            batch.clear()

        for message in self.outgoing(prepared, skip):
            batch.append(message)
            if len(batch) >= DELIVERY_BATCH:
                await flush()
        if batch:
            await flush()
        self.spool.remove(prepared.message_id)
        log.info(
            "send.delivered",
            message_id=prepared.message_id,
            tenant=prepared.tenant.id,
            recipients=len(results),
            delivered=sum(r.outcome == "delivered" for r in results),
        )
        return results

    def _drop_suppressed(self, prepared: PreparedSend, skip: frozenset[int]) -> frozenset[int]:
        """Screen the copies still to go against the tenant's suppression lists.

        Each listed recipient gets a ``dropped`` event naming the list, and is marked done in
        the spool so a resumed send does not drop it twice. Returns their numbers.
        """
        submission = prepared.submission
        pending = [spec for spec in submission.recipients if spec.number not in skip]
        if not pending:
            return frozenset()
        group_id = (submission.asm or {}).get("group_id")
        listed = self.runtime.suppressions.screen(
            prepared.tenant.id,
            [spec.address.email for spec in pending],
            group_id=group_id,
            bypasses=submission.bypasses,
        )
        dropped = [spec.number for spec in pending if normalise(spec.address.email) in listed]
        for number in dropped:
            kind = listed[normalise(submission.recipients[number].address.email)]
            data: dict[str, Any] = {"reason": DROP_REASONS[kind], "suppression": kind}
            if kind == "group_unsubscribe":
                data["asm_group_id"] = group_id
            self.runtime.emit(self._event("dropped", prepared, number, data))
        if dropped:
            self.spool.mark_done(prepared.message_id, dropped)
            log.info(
                "send.dropped",
                message_id=prepared.message_id,
                tenant=prepared.tenant.id,
                recipients=len(dropped),
            )
        return frozenset(dropped)

    def _record(
        self, prepared: PreparedSend, message: OutgoingMessage, result: DeliveryResult
    ) -> None:
        kind = {"delivered": "delivered", "deferred": "deferred", "failed": "bounce"}[
            result.outcome
        ]
        data: dict[str, Any] = {"response": result.detail, "attempts": result.attempts}
        if result.smtp_code is not None:
            data["smtp_code"] = result.smtp_code
        if result.outcome == "failed":
            data["bounce_type"] = "relay"
        self.runtime.emit(self._event(kind, prepared, message.recipient, data))

    async def resume(self) -> int:
        """Deliver what spooled sends have left undelivered; returns how many were resumed."""
        resumed = 0
        for spooled in await anyio.to_thread.run_sync(lambda: list(self.spool.pending())):
            tenant = self.runtime.tenant(spooled.tenant)
            if tenant is None:
                log.error(
                    "send.resume_skipped",
                    message_id=spooled.message_id,
                    reason=f"tenant {spooled.tenant!r} is no longer configured",
                )
                continue
            try:
                prepared = await anyio.to_thread.run_sync(
                    functools.partial(
                        self.prepare,
                        tenant,
                        spooled.body,
                        message_id=spooled.message_id,
                        settings=spooled.settings,
                    )
                )
            except SendError as exc:
                log.error("send.resume_failed", message_id=spooled.message_id, error=str(exc))
                continue
            log.info(
                "send.resumed",
                message_id=spooled.message_id,
                remaining=len(prepared.recipients) - len(spooled.done),
            )
            await self.deliver(prepared, skip=spooled.done)
            resumed += 1
        return resumed

    async def send(self, tenant: Tenant, body: Any) -> PreparedSend:
        """Prepare, record and deliver; returns once every copy has a result."""
        prepared = await anyio.to_thread.run_sync(self.prepare, tenant, body)
        if not prepared.submission.sandbox:
            await anyio.to_thread.run_sync(self.persist, prepared)
            await self.deliver(prepared)
        return prepared
