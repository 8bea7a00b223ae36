"""The ``outbox`` transport: one ``.eml`` file per recipient in a folder (the embedded default).

Each file is written under a temporary name and renamed into place, so a reader of the folder
never sees half a message.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio

from core import Runtime, hookimpl
from core.transports import DeliveryResult, OutgoingMessage, TransportType

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


class OutboxTransport:
    name = "outbox"

    def __init__(self, directory: Path, fsync: bool) -> None:
        self.directory = directory
        self.fsync = fsync
        directory.mkdir(parents=True, exist_ok=True)

    def path_for(self, message: OutgoingMessage) -> Path:
        stem = _UNSAFE.sub("_", f"{message.message_id}-{message.recipient:06d}")
        return self.directory / f"{stem}.eml"

    def _write(self, message: OutgoingMessage) -> DeliveryResult:
        final = self.path_for(message)
        temporary = final.with_name(f".{final.name}.tmp")
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
            try:
                view = memoryview(message.data)
                while view:
                    view = view[os.write(fd, view) :]
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temporary, final)
        except OSError as exc:
            temporary.unlink(missing_ok=True)
            return DeliveryResult("deferred", f"outbox write failed: {exc.strerror}")
        return DeliveryResult("delivered", str(final))

    async def deliver(self, messages: Sequence[OutgoingMessage]) -> list[DeliveryResult]:
        return await anyio.to_thread.run_sync(lambda: [self._write(m) for m in messages])

    async def aclose(self) -> None:
        return None


def _factory(options: Mapping[str, Any], runtime: Runtime) -> OutboxTransport:
    path = Path(options["path"])
    if not path.is_absolute():
        path = runtime.config.data_dir / path
    return OutboxTransport(path, options["fsync"])


@hookimpl
def register_transports() -> Iterable[TransportType]:
    return [
        TransportType(
            type="outbox",
            factory=_factory,
            options_schema={
                "type": "object",
                "properties": {
                    "path": {"type": "string", "minLength": 1, "default": "outbox"},
                    "fsync": {"type": "boolean", "default": False},
                },
            },
            description="one .eml file per recipient in a folder",
        )
    ]
