"""A tenant's stored tracking overrides: the admin API's layer of the settings.

Every send needs them, so they are kept in memory per tenant. An update through this process
(the admin API's ``merge``) takes effect here at once; one made through another process or node
sharing the database is seen here within ``ttl`` seconds (5 by default), when the kept copy
expires and is read again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import peewee as pw

from core.config import thaw
from core.settings import deep_merge
from core.storage import TenantSettings
from core.storage.models import utcnow

DEFAULT_TTL = 5.0


def _copy(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A copy the caller may change without changing the kept one."""
    copied: dict[str, Any] = thaw(overrides)
    return copied


class StoredOverrides:
    def __init__(
        self,
        db: pw.Database,
        *,
        ttl: float = DEFAULT_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = db
        self.ttl = ttl
        self._clock = clock
        self._kept: dict[str, tuple[float, dict[str, Any]]] = {}
        self._lock = threading.Lock()
        # Bumped by every local update, so a read that raced one never keeps the older value.
        self._generation = 0

    def get(self, tenant: str) -> dict[str, Any]:
        now = self._clock()
        kept = self._kept.get(tenant)
        if kept is not None and now < kept[0]:
            return _copy(kept[1])
        generation = self._generation
        with self.db.connection_context():
            row = TenantSettings.get_or_none(TenantSettings.tenant == tenant)
            overrides = dict(row.overrides) if row else {}
        with self._lock:
            if generation == self._generation:
                self._kept[tenant] = (now + self.ttl, overrides)
        return _copy(overrides)

    def _keep(self, tenant: str, overrides: dict[str, Any]) -> None:
        with self._lock:
            self._generation += 1
            self._kept[tenant] = (self._clock() + self.ttl, _copy(overrides))

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
        self._keep(tenant, merged)
        return merged
