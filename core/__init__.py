"""ScaiSend core: the public API for plugins.

A plugin writes ``from core import hookimpl, Feature`` and implements hooks from
:mod:`core.hookspecs`.
"""

from core.config import Config, Tenant
from core.events import Event
from core.features import Feature
from core.hookspecs import hookimpl
from core.instrument import InstrumentContext
from core.pipeline import Recipient, Slot, StagedDocument, StagedPart
from core.runtime import Runtime, current_runtime
from core.sinks import Sink, SinkType
from core.tokens import TokenClaims
from core.transports import DeliveryResult, OutgoingMessage, Transport, TransportType

__all__ = [
    "Config",
    "DeliveryResult",
    "Event",
    "Feature",
    "InstrumentContext",
    "OutgoingMessage",
    "Recipient",
    "Runtime",
    "Sink",
    "SinkType",
    "Slot",
    "StagedDocument",
    "StagedPart",
    "Tenant",
    "TokenClaims",
    "Transport",
    "TransportType",
    "current_runtime",
    "hookimpl",
]
