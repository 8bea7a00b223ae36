"""Storage: peewee models and the database they live in (SQLite by default, or PostgreSQL)."""

from core.storage.database import connect_database, migrate, ping
from core.storage.first_opens import first_open_times
from core.storage.models import (
    MODELS,
    EventRecord,
    FirstInteraction,
    Message,
    MessageRecipient,
    TenantSettings,
    database_proxy,
)

__all__ = [
    "MODELS",
    "EventRecord",
    "FirstInteraction",
    "Message",
    "MessageRecipient",
    "TenantSettings",
    "connect_database",
    "database_proxy",
    "first_open_times",
    "migrate",
    "ping",
]
