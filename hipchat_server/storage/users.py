"""The users store: rows of the ``users`` table."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.engine import Engine

from hipchat_server.storage.database import run_in_transaction
from hipchat_server.storage.schema import users


class UserStore:
    def __init__(self, engine: Engine):
        self.engine = engine

    def get_by_username(self, username: str) -> dict | None:
        def work(connection):
            row = connection.execute(select(users).where(users.c.username == username)).mappings().first()
            return dict(row) if row else None

        return run_in_transaction(self.engine, "get_user_by_username", work)

    def insert(self, **values) -> int:
        def work(connection):
            return connection.execute(users.insert().values(**values)).inserted_primary_key[0]

        return run_in_transaction(self.engine, "insert_user", work)
