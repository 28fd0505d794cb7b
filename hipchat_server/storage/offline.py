"""Offline storage (XEP-0160): messages for users with no available resource, in MariaDB.

A message is stored in one short transaction and is durable when it commits;
it is deleted only after it was written to one of the user's streams, so a
crash in between delivers it twice rather than never.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from sqlalchemy import and_, func, select
from sqlalchemy.engine import Engine

from hipchat_server.storage.database import run_in_transaction
from hipchat_server.storage.schema import offline_messages, users


@dataclass(frozen=True)
class OfflineMessage:
    id: int
    sender: str
    stanza: str
    stored_at: datetime.datetime


class OfflineStore:
    """Stored messages per user. Every method blocks: call it off the reactor thread."""

    def __init__(self, engine: Engine, max_per_user: int = 5000):
        self.engine = engine
        self.max_per_user = max_per_user

    def store(self, username: str, sender: str, stanza: str) -> str:
        """Keep ``stanza`` for ``username``: "stored", "no-such-user" (or deactivated) or "full"."""

        def work(connection):
            user_id = connection.execute(
                select(users.c.id).where(and_(users.c.username == username, users.c.is_active.is_(True)))
            ).scalar()
            if user_id is None:
                return "no-such-user"
            count = connection.execute(
                select(func.count()).select_from(offline_messages).where(offline_messages.c.user_id == user_id)
            ).scalar()
            if count >= self.max_per_user:
                return "full"
            connection.execute(
                offline_messages.insert().values(
                    user_id=user_id, sender=sender, stanza=stanza, stored_at=datetime.datetime.utcnow()
                )
            )
            return "stored"

        return run_in_transaction(self.engine, "store_offline_message", work)

    def pending(self, username: str, limit: int = 1000) -> list[OfflineMessage]:
        """The oldest ``limit`` messages kept for ``username``, oldest first."""

        def work(connection):
            rows = connection.execute(
                select(offline_messages)
                .join(users, users.c.id == offline_messages.c.user_id)
                .where(users.c.username == username)
                .order_by(offline_messages.c.id)
                .limit(limit)
            ).mappings()
            return [OfflineMessage(r["id"], r["sender"], r["stanza"], r["stored_at"]) for r in rows]

        return run_in_transaction(self.engine, "get_offline_messages", work)

    def remove(self, ids: list[int]) -> int:
        """Delete delivered messages; return how many were still there."""
        if not ids:
            return 0
        return run_in_transaction(
            self.engine,
            "remove_offline_messages",
            lambda c: c.execute(offline_messages.delete().where(offline_messages.c.id.in_(ids))).rowcount,
        )

    def count(self, username: str) -> int:
        def work(connection):
            return connection.execute(
                select(func.count())
                .select_from(offline_messages)
                .join(users, users.c.id == offline_messages.c.user_id)
                .where(users.c.username == username)
            ).scalar()

        return run_in_transaction(self.engine, "count_offline_messages", work)
