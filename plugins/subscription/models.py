"""The subscription feature's own table: each tenant's unsubscribe (ASM) groups."""

from __future__ import annotations

import peewee as pw

from core.storage.models import BaseModel, utcnow


class UnsubscribeGroup(BaseModel):
    """One group a recipient can leave on its own, without leaving every other mail."""

    tenant = pw.CharField(max_length=128)
    group_id = pw.IntegerField()
    name = pw.CharField(max_length=100)
    description = pw.TextField(default="")
    is_default = pw.BooleanField(default=False)
    created_at = pw.DateTimeField(default=utcnow)

    class Meta:
        table_name = "unsubscribe_groups"
        primary_key = pw.CompositeKey("tenant", "group_id")
