"""The contract between the sending pipeline and a transport (outbox folder, SMTP relay...)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from core.runtime import Runtime


@dataclass(frozen=True)
class OutgoingMessage:
    """One recipient's finished message, ready to hand to the next hop."""

    tenant: str
    message_id: str
    recipient: int
    mail_from: str
    rcpt_to: str
    data: bytes = field(repr=False)
    """The complete RFC 5322 message with CRLF line endings."""


Outcome = Literal["delivered", "deferred", "failed"]


@dataclass(frozen=True)
class DeliveryResult:
    """What became of one :class:`OutgoingMessage`.

    ``delivered``: the next hop took responsibility (written to the outbox, or 2xx from the
    relay). ``deferred``: a temporary failure that outlasted the transport's retries.
    ``failed``: a permanent refusal (5xx); ``smtp_code`` and ``detail`` say why.
    """

    outcome: Outcome
    detail: str = ""
    smtp_code: int | None = None
    attempts: int = 1


class Transport(Protocol):
    """Delivers finished messages. Built once per process from ``server.transport``."""

    name: str

    async def deliver(self, messages: Sequence[OutgoingMessage]) -> list[DeliveryResult]:
        """One result per message, in order. Never raises for a message's own failure."""
        ...

    async def aclose(self) -> None: ...


TransportFactory = Callable[[Mapping[str, Any], "Runtime"], Transport]


@dataclass(frozen=True)
class TransportType:
    """A kind of transport a plugin offers; ``server.transport.type`` picks one.

    ``options_schema`` validates ``server.transport`` (its ``type`` key is core's).
    """

    type: str
    factory: TransportFactory
    options_schema: Mapping[str, Any] = field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )
    description: str = ""
