"""The tables core owns. Plugins define their own models on :data:`database_proxy`."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib

import peewee as pw

database_proxy = pw.DatabaseProxy()


def utcnow() -> dt.datetime:
    """Naive UTC: both databases store it unambiguously and compare it correctly."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class BaseModel(pw.Model):
    class Meta:
        database = database_proxy


class TenantSettings(BaseModel):
    """A tenant's tracking overrides stored through the admin API (the third settings layer)."""

    tenant = pw.CharField(primary_key=True, max_length=128)
    overrides = pw.JSONField(default=dict)
    updated_at = pw.DateTimeField(default=utcnow)

    class Meta:
        table_name = "tenant_settings"


class Message(BaseModel):
    """One accepted send: its id, tenant and the effective tracking settings it went out with."""

    id = pw.CharField(primary_key=True, max_length=64)
    tenant = pw.CharField(max_length=128, index=True)
    created_at = pw.DateTimeField(default=utcnow)
    subject = pw.TextField(null=True)
    settings = pw.JSONField(default=dict)
    data = pw.JSONField(default=dict)

    class Meta:
        table_name = "messages"


class MessageRecipient(BaseModel):
    """One recipient of a message; ``number`` (0-based, in send order) is what tokens carry.

    Its first-open time is not stored here but read from its first interactions
    (:func:`core.storage.first_open_times`): the open that decides it records it once.
    """

    message = pw.ForeignKeyField(Message, backref="recipients", on_delete="CASCADE")
    number = pw.IntegerField()
    email = pw.CharField(max_length=320)

    class Meta:
        table_name = "message_recipients"
        indexes = ((("message", "number"), True),)


class EventRecord(BaseModel):
    """An event as the database sink stores it; ``id`` makes redelivery idempotent."""

    id = pw.CharField(primary_key=True, max_length=64)
    type = pw.CharField(max_length=64)
    tenant = pw.CharField(max_length=128)
    message_id = pw.CharField(max_length=64, null=True, index=True)
    recipient = pw.CharField(max_length=320, null=True)
    timestamp = pw.DateTimeField()
    data = pw.JSONField(default=dict)
    bot = pw.JSONField(null=True)

    class Meta:
        table_name = "events"
        indexes = ((("tenant", "type", "timestamp"), False),)


class FirstInteraction(BaseModel):
    """The first event of a kind for one recipient and key (an open; a click on one URL).

    Whichever process inserts the row first owns the "unique" interaction; later ones see its
    event id and count theirs as repeats, so every node sharing the database agrees.
    """

    message_id = pw.CharField(max_length=64)
    recipient_number = pw.IntegerField()
    kind = pw.CharField(max_length=64)
    key_hash = pw.CharField(max_length=64)
    event_id = pw.CharField(max_length=64)
    at = pw.DateTimeField()

    class Meta:
        table_name = "first_interactions"
        primary_key = pw.CompositeKey("message_id", "recipient_number", "kind", "key_hash")


INTERACTION_KEY = (
    FirstInteraction.message_id,
    FirstInteraction.recipient_number,
    FirstInteraction.kind,
    FirstInteraction.key_hash,
)
"""The columns that make a first interaction, in its primary key's order."""
INTERACTION_FIELDS = (*INTERACTION_KEY, FirstInteraction.event_id, FirstInteraction.at)
"""Every column of a first interaction, in the order bulk writes take them."""


@functools.lru_cache(maxsize=4096)
def interaction_key_hash(key: str) -> str:
    """What ``key_hash`` holds for a dedupe key (opens: ``""``; clicks: the URL)."""
    # Cached: every open has the same key, and a campaign's clicks a few URLs.
    return hashlib.sha256(key.encode()).hexdigest()


NO_GROUP = 0
"""``group_id`` of suppression lists that are not per group (non-null keeps the key unique)."""


class Suppression(BaseModel):
    """One address on one list of one tenant."""

    tenant = pw.CharField(max_length=128)
    kind = pw.CharField(max_length=32)
    group_id = pw.IntegerField(default=NO_GROUP)
    email = pw.CharField(max_length=320)
    reason = pw.TextField(null=True)
    data = pw.JSONField(default=dict)
    created_at = pw.DateTimeField(default=utcnow)

    class Meta:
        table_name = "suppressions"
        primary_key = pw.CompositeKey("tenant", "kind", "group_id", "email")
        indexes = ((("tenant", "email"), False),)


MODELS: tuple[type[BaseModel], ...] = (
    TenantSettings,
    Message,
    MessageRecipient,
    EventRecord,
    FirstInteraction,
    Suppression,
)
