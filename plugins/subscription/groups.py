"""Unsubscribe groups per tenant: defined in YAML, managed through the API, kept in one table."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import peewee as pw

from core.storage.models import NO_GROUP, Suppression
from core.suppressions import MAX_GROUP_ID
from plugins.subscription.models import UnsubscribeGroup

_CREATE_ATTEMPTS = 20


class NoGroupIdLeft(Exception):
    """The tenant's highest group id is already :data:`MAX_GROUP_ID`."""


@dataclass(frozen=True)
class Group:
    id: int
    name: str
    description: str
    is_default: bool

    @classmethod
    def of(cls, row: UnsubscribeGroup) -> Group:
        return cls(row.group_id, row.name, row.description or "", bool(row.is_default))

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "is_default": self.is_default,
        }


class GroupStore:
    """Blocking reads and writes of the group table (run them off the event loop).

    At most one group per tenant is the default: marking one clears the flag on the others.
    """

    def __init__(self, db: pw.Database) -> None:
        self.db = db

    def _where(self, tenant: str, group_id: int) -> pw.Expression:
        return (UnsubscribeGroup.tenant == tenant) & (UnsubscribeGroup.group_id == group_id)

    def _clear_default(self, tenant: str, keep: int) -> None:
        UnsubscribeGroup.update(is_default=False).where(
            (UnsubscribeGroup.tenant == tenant) & (UnsubscribeGroup.group_id != keep)
        ).execute()

    def sync(self, tenant: str, groups: Iterable[Mapping[str, Any]]) -> None:
        """Write the groups a tenant's YAML defines (the YAML wins over earlier API edits)."""
        with self.db.connection_context(), self.db.atomic():
            for group in groups:
                fields = {
                    "name": group["name"],
                    "description": group.get("description", ""),
                    "is_default": bool(group.get("is_default", False)),
                }
                UnsubscribeGroup.insert(tenant=tenant, group_id=group["id"], **fields).on_conflict(
                    conflict_target=[UnsubscribeGroup.tenant, UnsubscribeGroup.group_id],
                    update=fields,
                ).execute()
                if fields["is_default"]:
                    self._clear_default(tenant, group["id"])

    def page(self, tenant: str, *, offset: int = 0, limit: int = 100) -> tuple[list[Group], int]:
        where = UnsubscribeGroup.tenant == tenant
        with self.db.connection_context():
            total = UnsubscribeGroup.select().where(where).count()
            rows = (
                UnsubscribeGroup.select()
                .where(where)
                .order_by(UnsubscribeGroup.group_id)
                .offset(offset)
                .limit(limit)
            )
            return [Group.of(row) for row in rows], total

    def get(self, tenant: str, group_id: int) -> Group | None:
        with self.db.connection_context():
            row = UnsubscribeGroup.get_or_none(self._where(tenant, group_id))
        return Group.of(row) if row is not None else None

    def many(self, tenant: str, group_ids: Iterable[int]) -> dict[int, Group]:
        wanted = sorted(set(group_ids))
        if not wanted:
            return {}
        with self.db.connection_context():
            rows = UnsubscribeGroup.select().where(
                (UnsubscribeGroup.tenant == tenant) & UnsubscribeGroup.group_id.in_(wanted)
            )
            return {row.group_id: Group.of(row) for row in rows}

    def create(self, tenant: str, name: str, description: str, is_default: bool) -> Group:
        """A new group whose id no other group, nor any group unsubscribe, of the tenant has;
        :class:`NoGroupIdLeft` if the next id would be beyond :data:`MAX_GROUP_ID`.

        Two creations racing for one id: the loser's insert fails on the key and it retries.
        """
        failures = 0
        while True:
            try:
                return self._create(tenant, name, description, is_default)
            except pw.IntegrityError:
                failures += 1
                if failures == _CREATE_ATTEMPTS:
                    raise

    def _create(self, tenant: str, name: str, description: str, is_default: bool) -> Group:
        # SQLite: take the write lock before reading the highest id, or two readers deadlock
        # upgrading to writers. PostgreSQL: the loser of a race retries on the key.
        atomic = (
            self.db.atomic("IMMEDIATE")
            if isinstance(self.db, pw.SqliteDatabase)
            else self.db.atomic()
        )
        with self.db.connection_context(), atomic:
            highest_group = (
                UnsubscribeGroup.select(pw.fn.MAX(UnsubscribeGroup.group_id))
                .where(UnsubscribeGroup.tenant == tenant)
                .scalar()
            )
            highest_listed = (
                Suppression.select(pw.fn.MAX(Suppression.group_id))
                .where(
                    (Suppression.tenant == tenant)
                    & (Suppression.group_id != NO_GROUP)
                    & (Suppression.group_id <= MAX_GROUP_ID)
                )
                .scalar()
            )
            group_id = max(highest_group or 0, highest_listed or 0) + 1
            if group_id > MAX_GROUP_ID:
                raise NoGroupIdLeft(f"group ids end at {MAX_GROUP_ID}")
            UnsubscribeGroup.create(
                tenant=tenant,
                group_id=group_id,
                name=name,
                description=description,
                is_default=is_default,
            )
            if is_default:
                self._clear_default(tenant, group_id)
        return Group(group_id, name, description, is_default)

    def update(self, tenant: str, group_id: int, changes: Mapping[str, Any]) -> Group | None:
        """Change some of ``name``, ``description``, ``is_default``; ``None`` if no such group."""
        with self.db.connection_context(), self.db.atomic():
            if changes:
                UnsubscribeGroup.update(**changes).where(self._where(tenant, group_id)).execute()
            if changes.get("is_default"):
                self._clear_default(tenant, group_id)
            row = UnsubscribeGroup.get_or_none(self._where(tenant, group_id))
        return Group.of(row) if row is not None else None

    def delete(self, tenant: str, group_id: int) -> bool:
        """Remove a group. Its unsubscribes stay: deleting a group never resubscribes anyone."""
        with self.db.connection_context(), self.db.atomic():
            deleted: int = UnsubscribeGroup.delete().where(self._where(tenant, group_id)).execute()
        return deleted > 0
