"""Accepted sends waiting for delivery, kept on disk so a crash cannot lose one.

A send is spooled (written atomically) before it is acknowledged. As batches are delivered,
their recipient numbers are appended to a ``.done`` file beside it; when every copy has a
result both files go. On start, the server resumes whatever is still spooled, delivering only
the copies without a result.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger("scaisend.spool")


@dataclass(frozen=True)
class Spooled:
    message_id: str
    tenant: str
    body: Mapping[str, Any]
    settings: Mapping[str, Any]
    done: frozenset[int]


class Spool:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def _paths(self, message_id: str) -> tuple[Path, Path]:
        return self.directory / f"{message_id}.json", self.directory / f"{message_id}.done"

    def put(
        self, message_id: str, tenant: str, body: Mapping[str, Any], settings: Mapping[str, Any]
    ) -> None:
        path, _ = self._paths(message_id)
        temporary = path.with_suffix(".tmp")
        payload = json.dumps(
            {"message_id": message_id, "tenant": tenant, "body": body, "settings": settings}
        ).encode()
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)

    def mark_done(self, message_id: str, numbers: Iterable[int]) -> None:
        _, done = self._paths(message_id)
        line = "".join(f"{number}\n" for number in numbers).encode()
        fd = os.open(done, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def remove(self, message_id: str) -> None:
        for path in self._paths(message_id):
            path.unlink(missing_ok=True)

    def pending(self) -> Iterator[Spooled]:
        for path in sorted(self.directory.glob("*.json")):
            try:
                raw = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                log.error("spool.unreadable", path=str(path), error=repr(exc))
                continue
            _, done_path = self._paths(raw["message_id"])
            done: set[int] = set()
            if done_path.exists():
                # Only whole lines count: the last one may have been cut short by a crash.
                for line in done_path.read_text().split("\n")[:-1]:
                    if line.isdigit():
                        done.add(int(line))
            yield Spooled(
                raw["message_id"], raw["tenant"], raw["body"], raw["settings"], frozenset(done)
            )
