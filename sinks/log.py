"""The ``log`` sink: every event as a structured log line."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import structlog

from core import Event, Runtime, SinkType, hookimpl


class LogSink:
    def __init__(self, name: str, level: str) -> None:
        self.name = name
        self.level = level
        self.log = structlog.get_logger("scaisend.events.sink")

    def write_batch(self, events: Sequence[Event]) -> None:
        for event in events:
            self.log.log(self.level_number, "event." + event.type, **event.to_dict())

    @property
    def level_number(self) -> int:
        return {"debug": 10, "info": 20, "warning": 30}[self.level]

    def close(self) -> None:
        return None


def _factory(options: Mapping[str, Any], runtime: Runtime) -> LogSink:
    return LogSink(options["name"], options["level"])


@hookimpl
def register_sinks() -> Iterable[SinkType]:
    return [
        SinkType(
            type="log",
            factory=_factory,
            options_schema={
                "type": "object",
                "properties": {
                    "level": {"enum": ["debug", "info", "warning"], "default": "info"},
                },
            },
            description="every event as a structured log line",
        )
    ]
