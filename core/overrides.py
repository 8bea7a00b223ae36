"""A tenant's stored tracking overrides: the admin API's layer of the settings."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import peewee as pw

from core.settings import deep_merge
from core.storage import TenantSettings
from core.storage.models import utcnow


class StoredOverrides:
    def __init__(self, db: pw.Database) -> None:
        self.db = db

    def get(self, tenant: str) -> dict[str, Any]:
        with self.db.connection_context():
            row = TenantSettings.get_or_none(TenantSettings.tenant == tenant)
            return dict(row.overrides) if row else {}

    def merge(
        self,
        tenant: str,
        patch: Mapping[str, Any],
        check: Callable[[dict[str, Any]], None],
    ) -> dict[str, Any]:
        """Deep-merge ``patch`` into the stored overrides, atomically; returns the new overrides.

        ``check`` sees the merged overrides inside the transaction and raises to abort it, so
        two concurrent updates never lose each other's fields and nothing invalid is stored.
        """
        with self.db.connection_context():
            transaction = (
                self.db.atomic("IMMEDIATE")
                if isinstance(self.db, pw.SqliteDatabase)
                else self.db.atomic()
            )
            with transaction:
                query = TenantSettings.select().where(TenantSettings.tenant == tenant)
                if not isinstance(self.db, pw.SqliteDatabase):
                    TenantSettings.insert(
                        tenant=tenant, overrides={}
                    ).on_conflict_ignore().execute()
                    query = query.for_update()
                row = query.first()
                merged = deep_merge(row.overrides if row else {}, patch)
                check(merged)
                TenantSettings.insert(
                    tenant=tenant, overrides=merged, updated_at=utcnow()
                ).on_conflict(
                    conflict_target=[TenantSettings.tenant],
                    update={TenantSettings.overrides: merged, TenantSettings.updated_at: utcnow()},
                ).execute()
                return merged
