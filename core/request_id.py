"""Every request gets an id: the caller's ``X-Request-Id`` if it is well formed, else a new one.

The id is bound to the request's log context and echoed on the response. It is done at the
ASGI level, around the whole application: no per-request hook for Quart to look up and run,
and every response carries the id, error responses included.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Coroutine
from typing import Any

import structlog
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, ASGISendEvent, Scope

_WELL_FORMED = re.compile(rb"[A-Za-z0-9._-]{1,64}")
_HEADER = b"x-request-id"

ASGIApp = Callable[[Scope, ASGIReceiveCallable, ASGISendCallable], Coroutine[Any, Any, None]]


def with_request_id(app: ASGIApp) -> ASGIApp:
    """``app`` with each HTTP request's id bound to the log context and set on its response."""

    async def call(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        given = next((value for name, value in scope["headers"] if name == _HEADER), b"")
        request_id = (
            given.decode("ascii") if _WELL_FORMED.fullmatch(given) else os.urandom(16).hex()
        )
        # Each request runs in a task of its own, whose context starts without another
        # request's bindings: binding is enough, nothing needs clearing.
        structlog.contextvars.bind_contextvars(request_id=request_id)
        header = (_HEADER, request_id.encode("ascii"))

        async def send_with_id(message: ASGISendEvent) -> None:
            if message["type"] == "http.response.start":
                # ASGI header names are lower case: a route's own id would be replaced.
                message["headers"] = [
                    *(item for item in message["headers"] if item[0] != _HEADER),
                    header,
                ]
            await send(message)

        await app(scope, receive, send_with_id)

    return call


def current_request_id() -> str | None:
    """The id of the request being served (``None`` outside a request)."""
    found = structlog.contextvars.get_contextvars().get("request_id")
    return found if isinstance(found, str) else None
