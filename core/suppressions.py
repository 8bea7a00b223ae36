"""Suppression lists: the addresses a tenant's sends must skip, and why.

Four lists per tenant, as SendGrid keeps them: global unsubscribes, group (ASM) unsubscribes,
bounces and spam reports. The subscription feature fills the first two, inbound bounce and
complaint processing the last two; the send path consults all of them before delivering,
unless the send's ``mail_settings`` bypass flags say otherwise. Addresses are compared
case-insensitively (stored lower-cased).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import peewee as pw

from core.storage.models import NO_GROUP, Suppression

Kind = Literal["unsubscribe", "group_unsubscribe", "bounce", "spamreport"]
KINDS: tuple[Kind, ...] = ("unsubscribe", "group_unsubscribe", "bounce", "spamreport")

MAX_GROUP_ID = 2_000_000_000
"""The highest unsubscribe group id: both databases keep group ids as 32-bit integers."""

BYPASS_FLAG: Mapping[Kind, str] = {
    "unsubscribe": "unsubscribe",
    "group_unsubscribe": "unsubscribe",
    "bounce": "bounce",
    "spamreport": "spam",
}
"""Which ``mail_settings.bypass_<flag>_management`` lifts each list."""


def normalise(email: str) -> str:
    return email.strip().lower()


@dataclass(frozen=True)
class Entry:
    email: str
    kind: str
    group_id: int | None
    reason: str | None
    data: Mapping[str, Any]
    created_at: dt.datetime

    @classmethod
    def of(cls, row: Suppression) -> Entry:
        return cls(
            email=row.email,
            kind=row.kind,
            group_id=row.group_id if row.group_id != NO_GROUP else None,
            reason=row.reason,
            data=row.data or {},
            created_at=row.created_at,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "email": self.email,
            "kind": self.kind,
            "group_id": self.group_id,
            "reason": self.reason,
            "created": int(self.created_at.replace(tzinfo=dt.UTC).timestamp()),
        }


def _check(kind: str, group_id: int | None) -> int:
    if kind not in KINDS:
        raise ValueError(f"unknown suppression list {kind!r}")
    if (kind == "group_unsubscribe") != (group_id is not None):
        raise ValueError("a group_id goes with group_unsubscribe, and only with it")
    return group_id if group_id is not None else NO_GROUP


class SuppressionStore:
    """Blocking reads and writes of the suppression lists (run them off the event loop).

    Every write commits before it returns and is idempotent: adding an address that is already
    listed, or removing one that is not, changes nothing and is not an error.
    """

    def __init__(self, db: pw.Database) -> None:
        self.db = db

    def add(
        self,
        tenant: str,
        email: str,
        kind: Kind,
        *,
        group_id: int | None = None,
        reason: str | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> bool:
        """List ``email``; ``True`` if it was not listed before."""
        group = _check(kind, group_id)
        with self.db.connection_context(), self.db.atomic():
            inserted = (
                Suppression.insert(
                    tenant=tenant,
                    kind=kind,
                    group_id=group,
                    email=normalise(email),
                    reason=reason,
                    data=dict(data or {}),
                )
                .on_conflict_ignore()
                .as_rowcount()
                .execute()
            )
        return bool(inserted)

    def remove(self, tenant: str, email: str, kind: Kind, *, group_id: int | None = None) -> bool:
        """Take ``email`` off the list; ``True`` if it was listed."""
        group = _check(kind, group_id)
        with self.db.connection_context(), self.db.atomic():
            deleted: int = (
                Suppression.delete()
                .where(
                    (Suppression.tenant == tenant)
                    & (Suppression.kind == kind)
                    & (Suppression.group_id == group)
                    & (Suppression.email == normalise(email))
                )
                .execute()
            )
        return deleted > 0

    def contains(self, tenant: str, email: str, kind: Kind, *, group_id: int | None = None) -> bool:
        group = _check(kind, group_id)
        with self.db.connection_context():
            return bool(
                Suppression.select(Suppression.email)
                .where(
                    (Suppression.tenant == tenant)
                    & (Suppression.kind == kind)
                    & (Suppression.group_id == group)
                    & (Suppression.email == normalise(email))
                )
                .exists()
            )

    def get(
        self, tenant: str, email: str, kind: Kind, *, group_id: int | None = None
    ) -> Entry | None:
        group = _check(kind, group_id)
        with self.db.connection_context():
            row = Suppression.get_or_none(
                (Suppression.tenant == tenant)
                & (Suppression.kind == kind)
                & (Suppression.group_id == group)
                & (Suppression.email == normalise(email))
            )
        return Entry.of(row) if row is not None else None

    def page(
        self,
        tenant: str,
        kind: Kind,
        *,
        group_id: int | None = None,
        offset: int = 0,
        limit: int = 100,
    ) -> tuple[list[Entry], int]:
        """One page of a list, oldest first, and the list's total length."""
        group = _check(kind, group_id)
        where = (
            (Suppression.tenant == tenant)
            & (Suppression.kind == kind)
            & (Suppression.group_id == group)
        )
        with self.db.connection_context():
            total = Suppression.select().where(where).count()
            rows = (
                Suppression.select()
                .where(where)
                .order_by(Suppression.created_at, Suppression.email)
                .offset(offset)
                .limit(limit)
            )
            return [Entry.of(row) for row in rows], total

    def screen(
        self,
        tenant: str,
        emails: Iterable[str],
        *,
        group_id: int | None,
        bypasses: Callable[[str], bool],
    ) -> dict[str, Kind]:
        """The addresses among ``emails`` a send must skip, each with the list that stops it.

        ``bypasses(flag)`` says whether the send lifts ``bypass_<flag>_management``. The group
        list counts only for a send that carries ``group_id``. Keys are normalised addresses.
        """
        wanted: Sequence[Kind] = [
            kind
            for kind in KINDS
            if not bypasses(BYPASS_FLAG[kind])
            and (kind != "group_unsubscribe" or group_id is not None)
        ]
        addresses = sorted({normalise(email) for email in emails})
        if not wanted or not addresses:
            return {}
        found: dict[str, Kind] = {}
        with self.db.connection_context():
            for start in range(0, len(addresses), 500):
                chunk = addresses[start : start + 500]
                condition = (Suppression.tenant == tenant) & Suppression.email.in_(chunk)
                scope = Suppression.kind.in_([k for k in wanted if k != "group_unsubscribe"])
                if "group_unsubscribe" in wanted:
                    scope |= (Suppression.kind == "group_unsubscribe") & (
                        Suppression.group_id == group_id
                    )
                query = Suppression.select(Suppression.email, Suppression.kind).where(
                    condition & scope
                )
                for row in query:
                    kind = KINDS[KINDS.index(row.kind)]
                    # The first list in KINDS order names the reason when several apply.
                    current = found.get(row.email)
                    if current is None or KINDS.index(kind) < KINDS.index(current):
                        found[row.email] = kind
        return found
