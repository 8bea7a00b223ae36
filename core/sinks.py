"""The contract between the event bus and a sink."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from core.events import Event
    from core.runtime import Runtime


class Sink(Protocol):
    """Receives events in batches, in journal order, at least once.

    ``write_batch`` is called from the sink's own thread; it either stores the whole batch and
    returns, or raises, in which case the bus retries the same batch later with backoff. A
    batch may be delivered again after a crash, so a sink should be idempotent on
    ``Event.id`` where it can be.
    """

    name: str

    def write_batch(self, events: Sequence[Event]) -> None: ...

    def close(self) -> None: ...


SinkFactory = Callable[[Mapping[str, Any], "Runtime"], Sink]


@dataclass(frozen=True)
class SinkType:
    """A kind of sink a plugin offers; operators list instances under ``server.sinks``.

    ``options_schema`` validates one entry of ``server.sinks`` (its ``type`` and ``name`` keys
    are core's and need not be declared). ``factory(options, runtime)`` builds the sink when
    the event bus starts.
    """

    type: str
    factory: SinkFactory
    options_schema: Mapping[str, Any] = field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )
    description: str = ""
