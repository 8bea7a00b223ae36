"""Who a token names, what they are subscribed to, and the actions that change it."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import structlog

from core import Event, Runtime, TokenClaims
from core.storage import Message, MessageRecipient
from core.storage.models import NO_GROUP, Suppression
from core.suppressions import MAX_GROUP_ID
from plugins.subscription.groups import Group, GroupStore

log = structlog.get_logger("scaisend.subscription")

Action = Literal["unsubscribe_all", "unsubscribe_group", "resubscribe_group"]
ACTIONS: tuple[Action, ...] = ("unsubscribe_all", "unsubscribe_group", "resubscribe_group")
EVENT_OF: dict[Action, str] = {
    "unsubscribe_all": "unsubscribe",
    "unsubscribe_group": "group_unsubscribe",
    "resubscribe_group": "group_resubscribe",
}


@dataclass(frozen=True)
class Subscriber:
    """The recipient of one copy of a message, as its token names it."""

    tenant: str
    message_id: str
    number: int
    email: str
    group_id: int | None
    groups_to_display: tuple[int, ...]
    settings: dict[str, Any]

    @property
    def display_ids(self) -> tuple[int, ...]:
        """The groups the landing page offers: the send's list, and always its own group."""
        ids = list(self.groups_to_display)
        if self.group_id is not None and self.group_id not in ids:
            ids.insert(0, self.group_id)
        return tuple(ids)


@dataclass(frozen=True)
class GroupState:
    group: Group
    unsubscribed: bool


@dataclass(frozen=True)
class Preferences:
    unsubscribed_all: bool
    groups: tuple[GroupState, ...]


def lookup(runtime: Runtime, claims: TokenClaims) -> Subscriber | None:
    """The recipient a verified token names; ``None`` if the message is not on record."""
    with runtime.db.connection_context():
        row = (
            MessageRecipient.select(MessageRecipient.email, Message.data, Message.settings)
            .join(Message)
            .where(
                (MessageRecipient.message == claims.message_id)
                & (MessageRecipient.number == claims.recipient)
                & (Message.tenant == claims.tenant)
            )
            .objects()
            .first()
        )
    if row is None:
        return None
    asm = (row.data or {}).get("asm") or {}
    group_id = asm.get("group_id")
    return Subscriber(
        tenant=claims.tenant,
        message_id=claims.message_id,
        number=claims.recipient,
        email=row.email,
        # A send may name a group id no group can have: no group list could hold it, so that
        # recipient's one-click leaves all mail rather than failing to leave any.
        group_id=group_id if _group_id(group_id) else None,
        groups_to_display=tuple(g for g in asm.get("groups_to_display") or () if _group_id(g)),
        settings=dict((row.settings or {}).get("subscription_tracking") or {}),
    )


def _group_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_GROUP_ID


def preferences(runtime: Runtime, subscriber: Subscriber) -> Preferences:
    """Whether the recipient is unsubscribed from everything, and from each displayed group."""
    groups = GroupStore(runtime.db).many(subscriber.tenant, subscriber.display_ids)
    with runtime.db.connection_context():
        listed = {
            (row.kind, row.group_id)
            for row in Suppression.select(Suppression.kind, Suppression.group_id).where(
                (Suppression.tenant == subscriber.tenant)
                & (Suppression.email == subscriber.email.strip().lower())
                & Suppression.kind.in_(["unsubscribe", "group_unsubscribe"])
            )
        }
    states = tuple(
        GroupState(
            groups.get(group_id) or Group(group_id, f"Group {group_id}", "", False),
            ("group_unsubscribe", group_id) in listed,
        )
        for group_id in subscriber.display_ids
    )
    return Preferences(("unsubscribe", NO_GROUP) in listed, states)


def allowed_groups(runtime: Runtime, subscriber: Subscriber) -> set[int]:
    """Groups a recipient may leave or rejoin: those shown, and any the tenant defines."""
    defined = GroupStore(runtime.db).page(subscriber.tenant, limit=10_000)[0]
    return set(subscriber.display_ids) | {group.id for group in defined}


def apply(
    runtime: Runtime,
    subscriber: Subscriber,
    action: Action,
    group_id: int | None,
    source: str,
) -> bool:
    """Apply ``action``, committed before this returns; ``True`` if it changed anything.

    The event is emitted only for a change, so a repeated or concurrent request records one.
    """
    store = runtime.suppressions
    reason = f"unsubscribed via {source}"
    data = {"message_id": subscriber.message_id, "source": source}
    if action == "unsubscribe_all":
        changed = store.add(
            subscriber.tenant, subscriber.email, "unsubscribe", reason=reason, data=data
        )
    elif action == "unsubscribe_group":
        changed = store.add(
            subscriber.tenant,
            subscriber.email,
            "group_unsubscribe",
            group_id=group_id,
            reason=reason,
            data=data,
        )
    else:
        changed = store.remove(
            subscriber.tenant, subscriber.email, "group_unsubscribe", group_id=group_id
        )
    log.info(
        "subscription.action",
        action=action,
        tenant=subscriber.tenant,
        message_id=subscriber.message_id,
        group_id=group_id,
        source=source,
        changed=changed,
    )
    if changed:
        runtime.emit(
            Event(
                type=EVENT_OF[action],
                tenant=subscriber.tenant,
                message_id=subscriber.message_id,
                recipient=subscriber.email,
                data={
                    "recipient_number": subscriber.number,
                    "source": source,
                    **({"asm_group_id": group_id} if group_id is not None else {}),
                },
            )
        )
    return changed


def parse_group(raw: str | None, allowed: Iterable[int]) -> int | None:
    """The group id of a form field, if it is a whole number among ``allowed``."""
    if raw is None or not re.fullmatch(r"[0-9]{1,12}", raw.strip()):
        return None
    group_id = int(raw.strip())
    return group_id if group_id in set(allowed) else None
