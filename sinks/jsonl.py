"""The ``jsonl`` sink: one JSON object per line, appended to a file."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from core import Event, Runtime, SinkType, hookimpl


class JsonlSink:
    def __init__(self, name: str, path: Path, fsync: bool) -> None:
        self.name = name
        self.path = path
        self.fsync = fsync
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def write_batch(self, events: Sequence[Event]) -> None:
        payload = "".join(
            json.dumps(event.to_dict(), separators=(",", ":")) + "\n" for event in events
        ).encode()
        view = memoryview(payload)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        if self.fsync:
            os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)


def _factory(options: Mapping[str, Any], runtime: Runtime) -> JsonlSink:
    path = Path(options["path"])
    if not path.is_absolute():
        path = runtime.config.data_dir / path
    return JsonlSink(options["name"], path, options["fsync"])


@hookimpl
def register_sinks() -> Iterable[SinkType]:
    return [
        SinkType(
            type="jsonl",
            factory=_factory,
            options_schema={
                "type": "object",
                "properties": {
                    "path": {
                        "type": "string",
                        "minLength": 1,
                        "default": "events.jsonl",
                        "description": "file to append to; relative to the data directory",
                    },
                    "fsync": {"type": "boolean", "default": False},
                },
            },
            description="one JSON line per event, appended to a file",
        )
    ]
