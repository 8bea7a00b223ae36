"""Authentication: tenant API keys for the tenant APIs, signed JWTs for the admin API."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

import jwt

from core.config import AdminJwt

if TYPE_CHECKING:
    from core.config import Tenant
    from core.runtime import Runtime

ADMIN_AUDIENCE = "scaisend:admin"


class AuthError(Exception):
    """Authentication failed: ``status`` is 401 (who are you?) or 403 (not for you)."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(message)


def bearer(header: str | None) -> str:
    if not header:
        raise AuthError(401, "missing Authorization header")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        raise AuthError(401, "Authorization must be 'Bearer <token>'")
    return credentials.strip()


@dataclass(frozen=True)
class AdminClaims:
    tenant: str
    subject: str
    expires: dt.datetime


def mint_admin_token(
    settings: AdminJwt,
    tenant: str,
    ttl: dt.timedelta,
    subject: str = "operator",
    private_key: str | None = None,
) -> str:
    """A JWT granting admin access to one tenant for ``ttl``."""
    now = dt.datetime.now(dt.UTC)
    claims = {
        "iss": settings.issuer,
        "aud": ADMIN_AUDIENCE,
        "sub": subject,
        "tenant": tenant,
        "iat": now,
        "nbf": now,
        "exp": now + ttl,
        "jti": uuid.uuid4().hex,
    }
    if settings.algorithm == "HS256":
        key = settings.secret
    else:
        key = private_key or settings.private_key
        if not key:
            raise ValueError("RS256 tokens need the private key (admin_jwt.private_key or --key)")
    if not key:
        raise ValueError("no admin_jwt secret configured")
    return jwt.encode(claims, key, algorithm=settings.algorithm)


def verify_admin_token(settings: AdminJwt, token: str, tenant: str) -> AdminClaims:
    """Claims of a valid token for ``tenant``; :class:`AuthError` (401 or 403) otherwise.

    Only the configured algorithm is accepted, so ``alg: none`` and algorithm confusion
    (an HS256 token signed with the RS256 public key) are refused.
    """
    key = settings.secret if settings.algorithm == "HS256" else settings.public_key
    if not key:
        raise AuthError(401, "admin authentication is not configured")
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[settings.algorithm],
            audience=ADMIN_AUDIENCE,
            issuer=settings.issuer,
            options={"require": ["exp", "iat", "tenant", "aud", "iss"]},
            leeway=dt.timedelta(seconds=30),
        )
    except jwt.ExpiredSignatureError as exc:
        raise AuthError(401, "token expired") from exc
    except jwt.InvalidTokenError as exc:
        raise AuthError(401, "invalid token") from exc
    if claims["tenant"] != tenant:
        raise AuthError(403, "token is not valid for this tenant")
    return AdminClaims(
        tenant=claims["tenant"],
        subject=str(claims.get("sub", "")),
        expires=dt.datetime.fromtimestamp(claims["exp"], dt.UTC),
    )


def tenant_for_request(runtime: Runtime, authorization: str | None) -> Tenant:
    """The tenant whose API key is the request's bearer token; :class:`AuthError` (401) if none.

    Every tenant API (sending, suppressions, images...) authenticates this way, and a route
    then only ever reads or writes the returned tenant's data.
    """
    key = bearer(authorization)
    tenant = runtime.tenant_for_api_key(key)
    if tenant is None:
        raise AuthError(401, "invalid API key")
    return tenant
