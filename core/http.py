"""Request facts that several tracking routes need."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import structlog
from quart import request

from core.events import Event

if TYPE_CHECKING:
    from core.runtime import Runtime
    from core.tokens import TokenClaims

log = structlog.get_logger("scaisend.http")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=16)
def _networks(proxies: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(proxy, strict=False) for proxy in proxies)


def _trusted(address: str, networks: Iterable[IPNetwork]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def client_ip(
    remote_addr: str | None, forwarded_for: str | None, trusted_proxies: tuple[str, ...]
) -> str | None:
    """The client's address: ``X-Forwarded-For`` is believed only from trusted proxies.

    Walking the header from the right, each hop added by a trusted proxy is skipped; the first
    address not in a trusted range is the client (anything left of it could be forged).
    """
    if not remote_addr or not forwarded_for or not trusted_proxies:
        return remote_addr
    networks = _networks(trusted_proxies)
    if not _trusted(remote_addr, networks):
        return remote_addr
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, networks):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return remote_addr
    return hops[0] if hops else remote_addr


def visitor(trusted_proxies: tuple[str, ...]) -> dict[str, str | None]:
    """The user agent and client address of the request being served, as events record them."""
    headers = request.headers
    forwarded_for = headers.get("X-Forwarded-For") if trusted_proxies else None
    return {
        "user_agent": headers.get("User-Agent"),
        "ip": client_ip(request.remote_addr, forwarded_for, trusted_proxies),
    }


def record_hit(
    runtime: Runtime, kind: str, claims: TokenClaims, *, dedupe_key: str, **data: Any
) -> None:
    """Journal the event a recipient's request causes (``open``, ``click``...), with the
    recipient's number, ``dedupe_key`` (what makes a repeat: one unique ``kind`` per recipient
    and key), ``data`` and the visitor. A journal that cannot be written is logged, never
    raised: the recipient still gets the pixel, the redirect or the image."""
    try:
        runtime.emit(
            Event(
                type=kind,
                tenant=claims.tenant,
                message_id=claims.message_id,
                data={
                    "recipient_number": claims.recipient,
                    "dedupe_key": dedupe_key,
                    **data,
                    **visitor(runtime.config.trusted_proxies),
                },
            )
        )
    except OSError as exc:
        log.error("hit.not_recorded", kind=kind, message_id=claims.message_id, error=repr(exc))
