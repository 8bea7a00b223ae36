"""The Python API: the same pipeline as ``POST /v3/mail/send``, without the HTTP server.

::

    from core.api import ScaiSend

    with ScaiSend() as scaisend:                     # or ScaiSend(Path("scaisend.yaml"))
        message_id = scaisend.send({"personalizations": [...], "from": {...}, ...})
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio

from core.config import Config, Tenant
from core.runtime import Plugins, Runtime, load
from core.send.compose import FieldError, SendError
from core.send.service import PreparedSend, SendService


class ScaiSend:
    """A local handle on ScaiSend: configuration, database, event journal and transport."""

    def __init__(
        self,
        config_path: Path | None = None,
        *,
        loaded: tuple[Plugins, Config] | None = None,
    ) -> None:
        self.plugins, self.config = loaded or load(config_path)
        self.runtime = Runtime.open(self.config, self.plugins, role="cli")
        self.runtime.start()
        self.service = SendService(self.runtime)

    def __enter__(self) -> ScaiSend:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        anyio.run(self.runtime.aclose_transport)
        self.runtime.close()

    def tenant(self, tenant_id: str) -> Tenant:
        tenant = self.config.tenant(tenant_id)
        if tenant is None:
            raise SendError([FieldError(None, f"unknown tenant {tenant_id!r}")])
        return tenant

    def prepare(self, body: Mapping[str, Any], tenant: str = "default") -> PreparedSend:
        """Validate and instrument a send without recording or delivering it."""
        return self.service.prepare(self.tenant(tenant), body)

    def send(
        self,
        body: Mapping[str, Any],
        tenant: str = "default",
        progress: Callable[[int], None] | None = None,
    ) -> str:
        """Send now; returns the message id once every copy has a delivery result.

        Raises :class:`core.send.compose.SendError` listing every problem of a bad body.
        """
        prepared = self.prepare(body, tenant)
        if prepared.submission.sandbox:
            return prepared.message_id
        self.service.persist(prepared)
        anyio.run(lambda: self.service.deliver(prepared, progress))
        return prepared.message_id
