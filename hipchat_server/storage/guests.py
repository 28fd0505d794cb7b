"""The guests store: ``guests`` rows (a guest account's room and lifetime) and the rooms their links name.

A guest account itself is a ``users`` row with ``is_guest`` (made by
`users.create_user`); this store links it to its room and ends it. Times are
naive UTC. Blocking: call it from a thread.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import and_, select, update
from sqlalchemy.engine import Engine

from hipchat_server.storage.database import run_in_transaction
from hipchat_server.storage.schema import guests, rooms, users

_owners = users.alias("owners")

# What the guest page and the guest login need to know about a room.
_ROOM_COLUMNS = (
    rooms.c.id.label("room_id"),
    rooms.c.jid_node,
    rooms.c.name.label("room_name"),
    rooms.c.privacy,
    rooms.c.is_archived,
    rooms.c.is_locked,
    rooms.c.is_guest_accessible,
    _owners.c.username.label("owner"),
)


class GuestStore:
    def __init__(self, engine: Engine):
        self.engine = engine

    def room_by_token(self, token: str) -> dict | None:
        """The room whose guest link token is ``token`` (room_id, jid_node, room_name, privacy, flags, owner); None if none."""
        query = select(*_ROOM_COLUMNS).select_from(rooms.outerjoin(_owners, _owners.c.id == rooms.c.owner_id)).where(rooms.c.guest_token == token)

        def work(connection):
            row = connection.execute(query).mappings().first()
            return dict(row) if row else None

        return run_in_transaction(self.engine, "get_room_by_guest_token", work)

    def add(self, user_id: int, room_id: int, now: datetime) -> None:
        """Record the guest account ``user_id`` as let into ``room_id``."""
        values = dict(user_id=user_id, room_id=room_id, created_at=now)
        run_in_transaction(self.engine, "add_guest", lambda c: c.execute(guests.insert().values(**values)))

    def get(self, username: str) -> dict | None:
        """The guest ``username`` with its room (user_id, username, name, created_at, logged_in_at, ended_at, and the room's columns)."""
        query = (
            select(users.c.id.label("user_id"), users.c.username, users.c.name, guests.c.created_at, guests.c.logged_in_at, guests.c.ended_at, *_ROOM_COLUMNS)
            .select_from(
                guests.join(users, users.c.id == guests.c.user_id)
                .join(rooms, rooms.c.id == guests.c.room_id)
                .outerjoin(_owners, _owners.c.id == rooms.c.owner_id)
            )
            .where(users.c.username == username, users.c.is_guest.is_(True))
        )

        def work(connection):
            row = connection.execute(query).mappings().first()
            return dict(row) if row else None

        return run_in_transaction(self.engine, "get_guest", work)

    def mark_logged_in(self, user_id: int, now: datetime) -> bool:
        """Record the guest's one login; False when it logged in before or has ended."""
        query = (
            update(guests)
            .where(guests.c.user_id == user_id, guests.c.logged_in_at.is_(None), guests.c.ended_at.is_(None))
            .values(logged_in_at=now)
        )
        return run_in_transaction(self.engine, "mark_guest_logged_in", lambda c: c.execute(query).rowcount == 1)

    def end(self, user_ids, now: datetime) -> int:
        """End these guests: their accounts are disabled and marked deleted (the rows stay: messages keep their author)."""
        ids = sorted(set(user_ids))
        if not ids:
            return 0

        def work(connection):
            ended = connection.execute(
                update(guests).where(guests.c.user_id.in_(ids), guests.c.ended_at.is_(None)).values(ended_at=now)
            ).rowcount
            connection.execute(
                update(users).where(users.c.id.in_(ids), users.c.is_guest.is_(True), users.c.deleted_at.is_(None)).values(is_active=False, deleted_at=now)
            )
            return ended

        return run_in_transaction(self.engine, "end_guests", work)

    def live(self, room_id: int | None = None) -> list[dict]:
        """Guests not ended (user_id, username), of one room or of every room."""
        conditions = [guests.c.ended_at.is_(None)]
        if room_id is not None:
            conditions.append(guests.c.room_id == room_id)
        query = (
            select(guests.c.user_id, users.c.username)
            .select_from(guests.join(users, users.c.id == guests.c.user_id))
            .where(and_(*conditions))
            .order_by(guests.c.user_id)
        )
        return run_in_transaction(self.engine, "get_live_guests", lambda c: [dict(r) for r in c.execute(query).mappings()])

    def unused_before(self, cutoff: datetime) -> list[int]:
        """Guests made before ``cutoff`` that never logged in and have not ended (a guest page left without chatting)."""
        query = select(guests.c.user_id).where(guests.c.logged_in_at.is_(None), guests.c.ended_at.is_(None), guests.c.created_at < cutoff)
        return run_in_transaction(self.engine, "get_unused_guests", lambda c: list(c.execute(query).scalars()))
