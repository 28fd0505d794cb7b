"""Queries of the console's user list: search by username, name or e-mail, with paging.

Blocking: call it from a thread.
"""

from __future__ import annotations

from sqlalchemy import func, or_, select
from sqlalchemy.engine import Engine

from hipchat_server.storage.database import run_in_transaction
from hipchat_server.storage.schema import users


class UserSearchStore:
    def __init__(self, engine: Engine):
        self.engine = engine

    def search(self, text: str, *, include_inactive: bool, start: int, limit: int) -> tuple[list[dict], int]:
        """Undeleted users whose username, name or e-mail contains ``text`` (all when empty), by username; and how many."""
        conditions = [users.c.deleted_at.is_(None)]
        if text:
            conditions.append(
                or_(
                    users.c.username.contains(text, autoescape=True),
                    users.c.name.contains(text, autoescape=True),
                    users.c.email.contains(text, autoescape=True),
                )
            )
        if not include_inactive:
            conditions.append(users.c.is_active.is_(True))
        columns = (users.c.id, users.c.username, users.c.name, users.c.email, users.c.is_admin, users.c.is_active, users.c.is_guest, users.c.created_at)

        def work(connection):
            rows = connection.execute(select(*columns).where(*conditions).order_by(users.c.username).offset(start).limit(limit)).mappings()
            rows = [dict(r) for r in rows]
            total = connection.execute(select(func.count()).select_from(users).where(*conditions)).scalar_one()
            return rows, total

        return run_in_transaction(self.engine, "search_users", work)
