"""Storage: peewee models and the database they live in (SQLite by default, or PostgreSQL)."""

from core.storage.database import connect_database, migrate, ping
from core.storage.first_opens import first_open_times
from core.storage.models import (
    INTERACTION_FIELDS,
    INTERACTION_KEY,
    MODELS,
    EventRecord,
    FirstInteraction,
    Message,
    MessageRecipient,
    TenantSettings,
    database_proxy,
    interaction_key_hash,
)

__all__ = [
    "INTERACTION_FIELDS",
    "INTERACTION_KEY",
    "MODELS",
    "EventRecord",
    "FirstInteraction",
    "Message",
    "MessageRecipient",
    "TenantSettings",
    "connect_database",
    "database_proxy",
    "first_open_times",
    "interaction_key_hash",
    "migrate",
    "ping",
]
