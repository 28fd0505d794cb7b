"""Room webhooks and incoming commit hooks in MariaDB (tables ``webhooks``, ``commit_hooks``).

Blocking: call it from a thread. Rooms are named by id (HipChat's) or by
their JID localpart (what the XMPP side knows).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, insert, select
from sqlalchemy.engine import Engine

from hipchat_server.storage.database import run_in_transaction
from hipchat_server.storage.schema import commit_hooks, rooms, users, webhooks


@dataclass(frozen=True)
class RoomRef:
    """The few facts about a room that an event's payload carries."""

    id: int
    name: str
    jid_node: str


@dataclass(frozen=True)
class WebhookRow:
    id: int
    room_id: int
    name: str
    url: str
    event: str
    pattern: str | None
    secret: str | None
    oauth_client_id: str | None
    created_by: int | None
    created_at: datetime | None
    creator: str | None = None  # the username of created_by (read by `WebhookStore.get` only)


@dataclass(frozen=True)
class CommitHookRow:
    id: int
    room_id: int
    label: str
    secret: str | None
    created_at: datetime | None


@dataclass(frozen=True)
class Person:
    """A user as event payloads show them (HipChat's ``from`` / ``sender`` / ``mentions``)."""

    id: int
    username: str
    name: str
    mention_name: str
    email: str


def _webhook(row) -> WebhookRow:
    return WebhookRow(
        id=row.id,
        room_id=row.room_id,
        name=row.name,
        url=row.url,
        event=row.event,
        pattern=row.pattern,
        secret=row.secret,
        oauth_client_id=row.oauth_client_id,
        created_by=row.created_by,
        created_at=row.created_at,
        creator=row._mapping.get("creator"),
    )


def _room_where(room_id: int | None, node: str | None):
    return rooms.c.id == room_id if room_id is not None else rooms.c.jid_node == node


class WebhookStore:
    def __init__(self, engine: Engine):
        self.engine = engine

    # Webhooks.
    def room_webhooks(self, *, room_id: int | None = None, node: str | None = None) -> tuple[RoomRef | None, list[WebhookRow]]:
        """A room (by id or JID localpart) and its webhooks; (None, []) when there is no such room."""

        def work(connection):
            room = connection.execute(select(rooms.c.id, rooms.c.name, rooms.c.jid_node).where(_room_where(room_id, node))).first()
            if room is None:
                return None, []
            rows = connection.execute(select(webhooks).where(webhooks.c.room_id == room.id).order_by(webhooks.c.id)).all()
            return RoomRef(room.id, room.name, room.jid_node), [_webhook(r) for r in rows]

        return run_in_transaction(self.engine, "get_room_webhooks", work)

    def get(self, room_id: int, webhook_id: int) -> WebhookRow | None:
        """One webhook of a room, with its creator's username (None when no user created it or the row is gone)."""
        query = (
            select(webhooks, users.c.username.label("creator"))
            .select_from(webhooks.outerjoin(users, users.c.id == webhooks.c.created_by))
            .where(webhooks.c.room_id == room_id, webhooks.c.id == webhook_id)
        )
        row = run_in_transaction(self.engine, "get_webhook", lambda c: c.execute(query).first())
        return None if row is None else _webhook(row)

    def insert(self, *, room_id: int, name: str, url: str, event: str, pattern: str | None, secret: str | None,
               oauth_client_id: str | None, created_by: int | None) -> int:
        values = dict(room_id=room_id, name=name, url=url, event=event, pattern=pattern, secret=secret,
                      oauth_client_id=oauth_client_id, created_by=created_by)
        return run_in_transaction(self.engine, "insert_webhook", lambda c: c.execute(insert(webhooks).values(**values)).inserted_primary_key[0])

    def delete(self, room_id: int, webhook_id: int) -> bool:
        """Delete a room's webhook; False when the room has none with that id."""
        return run_in_transaction(
            self.engine,
            "delete_webhook",
            lambda c: c.execute(delete(webhooks).where(webhooks.c.room_id == room_id, webhooks.c.id == webhook_id)).rowcount > 0,
        )

    def count_for_room(self, room_id: int) -> int:
        from sqlalchemy import func

        return run_in_transaction(
            self.engine, "count_room_webhooks", lambda c: c.execute(select(func.count()).where(webhooks.c.room_id == room_id)).scalar_one()
        )

    # Commit hooks.
    def insert_commit_hook(self, *, room_id: int, token_hash: str, label: str, secret: str | None, created_by: int | None) -> int:
        values = dict(room_id=room_id, token_hash=token_hash, label=label, secret=secret, created_by=created_by)
        return run_in_transaction(
            self.engine, "insert_commit_hook", lambda c: c.execute(insert(commit_hooks).values(**values)).inserted_primary_key[0]
        )

    def commit_hook(self, room_id: int, token_hash: str) -> CommitHookRow | None:
        """The room's commit hook with that token (by hash); None when there is none."""
        row = run_in_transaction(
            self.engine,
            "get_commit_hook",
            lambda c: c.execute(
                select(commit_hooks).where(commit_hooks.c.room_id == room_id, commit_hooks.c.token_hash == token_hash)
            ).first(),
        )
        return None if row is None else CommitHookRow(row.id, row.room_id, row.label, row.secret, row.created_at)

    def room(self, *, room_id: int | None = None, node: str | None = None) -> RoomRef | None:
        row = run_in_transaction(
            self.engine,
            "get_room_ref",
            lambda c: c.execute(select(rooms.c.id, rooms.c.name, rooms.c.jid_node).where(_room_where(room_id, node))).first(),
        )
        return None if row is None else RoomRef(row.id, row.name, row.jid_node)

    # People, as payloads name them.
    def people(self, *, usernames=(), mention_names=()) -> list[Person]:
        """Active users with one of these usernames or mention names (mention names compare without case)."""
        usernames, mention_names = list(usernames), [m.lower() for m in mention_names]
        if not usernames and not mention_names:
            return []
        from sqlalchemy import func, or_

        conditions = []
        if usernames:
            conditions.append(users.c.username.in_(usernames))
        if mention_names:
            conditions.append(func.lower(users.c.mention_name).in_(mention_names))
        query = select(users.c.id, users.c.username, users.c.name, users.c.mention_name, users.c.email).where(
            or_(*conditions), users.c.deleted_at.is_(None), users.c.is_active.is_(True)
        )
        rows = run_in_transaction(self.engine, "get_payload_people", lambda c: c.execute(query).all())
        return [Person(r.id, r.username, r.name, r.mention_name, r.email) for r in rows]
